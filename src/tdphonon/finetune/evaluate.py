"""Evaluation of base vs fine-tuned models on DFT harmonic data (held-out and training compounds).

Per compound and model: frequency MAE on the DFT supercell's commensurate q-points, max-frequency
error, F/S/Cv errors at 300 K (:func:`tdphonon.evaluation.compare_with_reference`), plus the
harmonic-fit residual |δF|/F = ‖F − (−Φu)‖/‖F‖ of the DFT force sets: how far the DFT forces are
from the harmonic model fitted to them (anharmonic or noisy labels), an uncertainty indicator
whose correlation with the frequency error is reported.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tdphonon.evaluation import ReferenceSet, compare_with_reference
from tdphonon.potentials import hardware_info, load_potential, package_versions
from tdphonon.sampling import full_force_constants

__all__ = ["evaluate_models", "harmonic_fit_residual", "parity_plot"]


def harmonic_fit_residual(ref: ReferenceSet) -> float | None:
    """‖F − (−Φu)‖ / ‖F‖ over the DFT displacement dataset of ``ref`` (``None`` if it has none)."""
    ph = ref.phonon
    ds = getattr(ph, "dataset", None) or {}
    disps = forces = None
    if "displacements" in ds and "forces" in ds:  # type-II (random displacements)
        disps, forces = np.asarray(ds["displacements"], float), np.asarray(ds["forces"], float)
    elif ds.get("first_atoms") and all("forces" in d for d in ds["first_atoms"]):  # type-I
        n = len(ph.supercell)
        disps = np.zeros((len(ds["first_atoms"]), n, 3))
        forces = np.zeros_like(disps)
        for k, d in enumerate(ds["first_atoms"]):
            disps[k, d["number"]] = d["displacement"]
            forces[k] = d["forces"]
    if disps is None or forces is None or not np.any(forces):
        return None
    fc = full_force_constants(ph)
    pred = -np.einsum("ijab,kjb->kia", fc, disps)
    return float(np.linalg.norm(forces - pred) / np.linalg.norm(forces))


def _corr(x: Sequence[float], y: Sequence[float]) -> dict[str, float | None]:
    from scipy.stats import pearsonr, spearmanr

    x, y = np.asarray(x, float), np.asarray(y, float)
    ok = np.isfinite(x) & np.isfinite(y)
    if ok.sum() < 3:
        return {"pearson": None, "spearman": None, "n": int(ok.sum())}
    return {"pearson": float(pearsonr(x[ok], y[ok])[0]), "spearman": float(spearmanr(x[ok], y[ok])[0]),
            "n": int(ok.sum())}


def evaluate_models(models: Mapping[str, str], references: Sequence[ReferenceSet], heldout: Sequence[str],
                    device: str | None = "cpu") -> dict[str, Any]:
    """Frequency errors of each model on each reference, split into held-out and training compounds.

    Parameters
    ----------
    models
        ``{"before": spec, "after": spec}`` (any :func:`load_potential` specs).
    references
        DFT sets (:class:`~tdphonon.evaluation.ReferenceSet`).
    heldout
        Names of the held-out compounds (the others count as training compounds).

    Returns
    -------
    dict
        Per model: per-compound comparisons, mean MAE on held-out and on training compounds;
        per compound: the harmonic-fit residual; correlations of residual vs the frequency error.
    """
    held = set(heldout)
    out: dict[str, Any] = {"models": {}, "residuals": {}, "heldout": sorted(held & {r.name for r in references}),
                           "train": sorted({r.name for r in references} - held)}
    for r in references:
        out["residuals"][r.name] = harmonic_fit_residual(r)
    for key, spec in models.items():
        pot = load_potential(spec, device=device)
        per: dict[str, Any] = {}
        t0 = time.perf_counter()
        for r in references:
            try:
                pot.check_elements(list(r.phonon.unitcell.symbols), r.name)
                per[r.name] = compare_with_reference(r, pot).to_dict()
            except Exception as exc:  # reported per compound
                per[r.name] = {"error": f"{type(exc).__name__}: {exc}"}

        def _mean(names, per=per):
            vals = [per[n]["mae_thz"] for n in names if n in per and "error" not in per[n]]
            return float(np.mean(vals)) if vals else None

        out["models"][key] = {"model": pot.identity.to_dict(), "materials": per,
                              "mae_thz_heldout": _mean(out["heldout"]), "mae_thz_train": _mean(out["train"]),
                              "seconds": time.perf_counter() - t0}
        names = [n for n in per if "error" not in per[n] and out["residuals"].get(n) is not None]
        out["models"][key]["residual_vs_error"] = _corr([out["residuals"][n] for n in names],
                                                        [per[n]["mae_thz"] for n in names])
    out["packages"] = package_versions()
    out["hardware"] = hardware_info(device)
    return out


def parity_plot(result: Mapping[str, Any], path: str | Path) -> Path:
    """DFT vs ML frequencies for each model (held-out compounds highlighted)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = result["models"]
    fig, axes = plt.subplots(1, len(models), figsize=(4.2 * len(models), 4.2), squeeze=False)
    held = set(result["heldout"])
    for ax, (key, m) in zip(axes[0], models.items(), strict=True):
        allv = [0.0]
        for name, v in m["materials"].items():
            if "error" in v:
                continue
            ax.scatter(v["frequencies_dft"], v["frequencies_ml"], s=3, alpha=0.5,
                       c="C3" if name in held else "C0")
            allv += v["frequencies_dft"] + v["frequencies_ml"]
        lim = [min(allv) - 0.5, max(allv) + 0.5]
        ax.plot(lim, lim, "k--", lw=0.7)
        ax.set_xlim(lim)
        ax.set_ylim(lim)
        h, t = m.get("mae_thz_heldout"), m.get("mae_thz_train")
        ax.set_title(f"{key}: {m['model']['name']}\nMAE held-out {h if h is None else round(h, 3)} THz "
                     f"(red), train {t if t is None else round(t, 3)} THz", fontsize=8)
        ax.set_xlabel("DFT frequency (THz)")
        ax.set_ylabel("ML frequency (THz)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)
