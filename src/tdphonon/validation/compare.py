"""ML TDPH vs reference (DFT) SCPH: the per-material comparison document and its figures.

The ML side is a campaign's :class:`~tdphonon.schemas.TDPhononDoc` (as a dict; with its arrays for
the dispersion figure); the reference side a :class:`~tdphonon.validation.pipeline.ValidationResult`
(or its ``summary()``). Frequency shifts are compared at Γ and the zone-boundary points of the band
path (both branches use seekpath's labels), mode by mode in ascending order.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["compare_with_ml", "plot_scattering_rates", "plot_validation_dispersions"]


def _ml_at(ml_doc: Mapping[str, Any], temperature: float) -> Mapping[str, Any] | None:
    for t in ml_doc.get("temperatures", []):
        if abs(float(t["temperature"]) - temperature) < 1e-6:
            return t
    return None


def compare_with_ml(validation: Mapping[str, Any], ml_doc: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Comparison document: per T and named q-point, harmonic and renormalised frequencies and shifts.

    ``validation``: ``ValidationResult.summary()``. Without ``ml_doc`` only the reference side is
    tabulated. Shifts in THz; ``r_onsite_max`` of both; κ_L of the reference (HA+3ph, SCPH+3ph).
    """
    ref_h = validation["named_frequencies"]["harmonic"]
    ml_h = (ml_doc or {}).get("harmonic", {}).get("named_frequencies", {}) if ml_doc else {}
    temps = validation["kappa_scph_3ph"]["temperatures"]
    rows = []
    for t in temps:
        ref_t = validation["named_frequencies"].get(f"{t:g}K", {})
        ml_t = _ml_at(ml_doc, t) if ml_doc else None
        for point, f0 in ref_h.items():
            row: dict[str, Any] = {"temperature": t, "point": point,
                                   "ref_harmonic_thz": f0, "ref_scph_thz": ref_t.get(point),
                                   "ref_shift_thz": (np.asarray(ref_t[point]) - np.asarray(f0)).tolist()
                                   if point in ref_t else None}
            if ml_t is not None and point in ml_h and point in (ml_t.get("named_frequencies") or {}):
                m0, mt = np.asarray(ml_h[point]), np.asarray(ml_t["named_frequencies"][point])
                row.update(ml_harmonic_thz=m0.tolist(), ml_tdph_thz=mt.tolist(), ml_shift_thz=(mt - m0).tolist())
                if row["ref_shift_thz"] is not None and len(mt) == len(f0):
                    row["shift_difference_thz"] = float(np.max(np.abs(np.asarray(row["ml_shift_thz"])
                                                                      - np.asarray(row["ref_shift_thz"]))))
            rows.append(row)
    k_ha = dict(zip(temps, validation["kappa_ha_3ph"]["kappa_average_wmk"], strict=True))
    k_sc = dict(zip(temps, validation["kappa_scph_3ph"]["kappa_average_wmk"], strict=True))
    kappa = [{"temperature": t, "ha_3ph_wmk": k_ha[t], "scph_3ph_wmk": k_sc[t]} for t in temps]
    r_on = []
    for t in temps:
        ml_t = _ml_at(ml_doc, t) if ml_doc else None
        r_on.append({"temperature": t, "ref_scph": validation["r_onsite_max"].get(f"{t:g}"),
                     "ml_tdph": ml_t["r_onsite_max"] if ml_t else None})
    return {"label": validation["label"], "formula": validation["formula"],
            "ml": {"model": (ml_doc or {}).get("model", {}).get("name"),
                   "estimator": (ml_doc or {}).get("tdph_settings", {}).get("estimator"),
                   "self_consistent": (ml_doc or {}).get("tdph_settings", {}).get("self_consistent")}
            if ml_doc else None,
            "reference": {"calculator": validation["calculator"].get("name"), "fit": validation["fit"]},
            "frequencies": rows, "r_onsite_max": r_on, "kappa_l": kappa,
            "kappa_mesh": validation["kappa_ha_3ph"]["mesh"], "kappa_convergence": validation.get("kappa_convergence")}


def plot_validation_dispersions(sets: list[tuple[str, Any]], path: str | Path, title: str = "") -> Path:
    """Dispersion + DOS of several phonopy objects overlaid (e.g. reference 0 K / SCPH T, ML 0 K / T)."""
    from tdphonon.harmonic import HarmonicSettings, phonon_properties
    from tdphonon.plotting import plot_dispersion_dos

    hs = HarmonicSettings(mesh=20.0, band_npoints=31, projected_dos=False)
    return plot_dispersion_dos([(lab, phonon_properties(ph, hs)) for lab, ph in sets], path, title=title)


def plot_scattering_rates(gamma: Mapping[str, Any], temperature: float, path: str | Path, title: str = "") -> Path:
    """Three-phonon scattering rates γ (THz) vs frequency: HA+3ph and SCPH+3ph at ``temperature``."""
    from tdphonon.analysis.trends import pyplot

    plt = pyplot()
    ha = gamma["ha"]
    temps = [float(k) for k in gamma["scph"]]
    i_t = int(np.argmin(np.abs(np.asarray(temps) - temperature)))
    sc = gamma["scph"][list(gamma["scph"])[i_t]]
    ha_t = np.asarray(ha["gamma_thz"])[i_t]
    fig, ax = plt.subplots(figsize=(5.5, 4))
    ax.scatter(np.asarray(ha["frequencies_thz"]).ravel(), ha_t.ravel(), s=8, alpha=0.6, label="HA + 3ph")
    ax.scatter(np.asarray(sc["frequencies_thz"]).ravel(), np.asarray(sc["gamma_thz"]).ravel(), s=8, alpha=0.6,
               label="SCPH + 3ph")
    ax.set_xlabel("frequency (THz)")
    ax.set_ylabel("γ (THz)")
    ax.set_yscale("log")
    ax.legend()
    ax.set_title(title or f"three-phonon scattering rates at {temps[i_t]:g} K", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return Path(path)
