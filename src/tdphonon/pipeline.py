"""The per-material pipeline in one process: harmonic phonons → Φ(T) → properties → files.

This is what ``tdphonon run`` executes, and what the campaign jobs execute step by step.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pymatgen.core import Structure

from tdphonon.harmonic import (
    HarmonicResult,
    HarmonicSettings,
    PhononProperties,
    Progress,
    _json_default,
    harmonic_phonons,
    phonon_properties,
    save_phonopy_yaml,
)
from tdphonon.potentials import Potential
from tdphonon.renormalize import RenormalizationResult, TDPHSettings, renormalize


def named_qpoints(props: PhononProperties) -> dict[str, list[float]]:
    """High-symmetry points of the band path, by label (e.g. Γ, X, M, R for a cubic perovskite)."""
    return band_named_qpoints(props.band)


def band_named_qpoints(band) -> dict[str, list[float]]:
    """High-symmetry points of a :class:`~tdphonon.harmonic.BandStructure`, by label."""
    out: dict[str, list[float]] = {}
    labels = [lab.replace("$", "").replace("\\mathrm{", "").replace("}", "").replace("\\Gamma", "Gamma")
              for lab in band.labels]
    ends = []
    for k, seg in enumerate(band.qpoints):
        ends.append(seg[0])
        if k + 1 >= len(band.qpoints) or (k < len(band.connections) and not band.connections[k]):
            ends.append(seg[-1])
    for lab, q in zip(labels, ends, strict=False):
        out.setdefault(lab, np.round(np.asarray(q, dtype=float), 8).tolist())
    return out


@dataclass
class TemperatureResult:
    """Φ(T) of one temperature plus its derived phonon properties."""

    renormalization: RenormalizationResult
    properties: PhononProperties

    @property
    def temperature(self) -> float:
        return self.renormalization.temperature


@dataclass
class TDPhononResult:
    """Harmonic + temperature-dependent phonons of one material."""

    harmonic: HarmonicResult
    temperatures: list[TemperatureResult]
    settings: TDPHSettings
    timings: dict = field(default_factory=dict)

    @property
    def label(self) -> str:
        return self.harmonic.label

    def summary(self) -> dict:
        """JSON summary: harmonic summary + per-temperature metrics, frequencies, cost, seeds."""
        h = self.harmonic.summary()
        temps = []
        for tr in self.temperatures:
            d = tr.renormalization.to_dict(include_arrays=False)
            d["phonons"] = tr.properties.summary()
            temps.append(d)
        return {**h, "tdph_settings": {**self.settings.to_dict(), "digest": self.settings.digest()},
                "temperatures": temps, "timings_s": {**h["timings_s"], **self.timings}}

    def save(self, out_dir: str | Path, plot: bool = True) -> dict[str, Path]:
        """Write phonopy yaml for Φ⁰ and every Φ(T), ``summary.json`` and the dispersion/DOS PNG."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        files: dict[str, Path] = {"phonopy_0K": save_phonopy_yaml(self.harmonic.phonon, out / "phonopy_0K.yaml")}
        for tr in self.temperatures:
            t = f"{tr.temperature:g}K"
            ph = tr.renormalization.phonopy(self.harmonic.phonon)
            files[f"phonopy_{t}"] = save_phonopy_yaml(ph, out / f"phonopy_{t}.yaml")
        files["summary"] = out / "summary.json"
        files["summary"].write_text(json.dumps(self.summary(), indent=1, default=_json_default))
        if plot:
            from tdphonon.plotting import plot_dispersion_dos

            sets = [("0 K (harmonic)", self.harmonic.properties)]
            sets += [(f"{tr.temperature:g} K", tr.properties) for tr in self.temperatures]
            files["plot"] = plot_dispersion_dos(
                sets, out / "dispersion_dos.png",
                title=f"{self.label} — {self.harmonic.model['name']} — {self.settings.estimator}"
                      f"{' self-consistent' if self.settings.self_consistent else ' one-shot'}")
        return files


def run_tdph(
    structure: Structure | str | Path,
    potential: Potential,
    temperatures: Sequence[float],
    harmonic_settings: HarmonicSettings | None = None,
    tdph_settings: TDPHSettings | None = None,
    *,
    label: str | None = None,
    progress: Progress | None = None,
) -> TDPhononResult:
    """Harmonic phonons, then Φ(T) at each temperature, then bands/DOS/thermal properties of Φ(T)."""
    hs = harmonic_settings or HarmonicSettings()
    ts = tdph_settings or TDPHSettings()
    harm = harmonic_phonons(structure, potential, hs, label=label, progress=progress)
    t0 = time.perf_counter()
    if progress:
        progress("renormalize", 0, len(temperatures))
    results = renormalize(harm.phonon, potential, temperatures, ts, harm.label,
                          qpoints=named_qpoints(harm.properties))
    t_ren = time.perf_counter() - t0
    if progress:
        progress("renormalize", len(temperatures), len(temperatures))
    t1 = time.perf_counter()
    temps = [TemperatureResult(r, phonon_properties(r.phonopy(harm.phonon), hs)) for r in results]
    return TDPhononResult(harmonic=harm, temperatures=temps, settings=ts,
                          timings={"renormalize": t_ren, "tdph_properties": time.perf_counter() - t1})
