"""Campaign results as pandas tables: one row per material, one row per symmetry-distinct site.

The input is what :func:`tdphonon.campaign.query` returns (:class:`~tdphonon.schemas.TDPhononDoc`
as dicts) from a MongoDB job store or the file-backed store of ``tdphonon campaign --local``. At
one temperature (default: the most common one, see :func:`pick_temperature`) the
material table carries R_full, R_onsite (material maximum), the relative frequency shift with their
error bars, the σᴬ score, space group, crystal system, composition and the pymatgen structure; the
site table carries R_onsite of every symmetry-distinct site with the site's index in the material's
structure (``structure_index``: the unit cell the phonons were computed for).

Units: frequencies THz; R_full, R_onsite and the shift are dimensionless.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from pymatgen.core import Structure

from tdphonon.errors import TDPhononError

__all__ = ["EXCLUSIONS", "check_exclusions", "excluded_materials", "load_results", "material_frame",
           "pick_temperature", "site_frame", "supercell_to_unitcell"]

#: what ``analyze(exclude=...)`` can leave out, and the reason recorded for each material
EXCLUSIONS: dict[str, str] = {
    "imaginary_fixed_points": "converged to a Φ(T) with imaginary modes (a fixed point of the policy, not SCHA)",
    "step_sensitive": "harmonic force constants depend on the finite-displacement step",
    "cut_samples": "sample cut at this temperature (configurations dropped or displacements clipped)",
}


def load_results(store, campaign: str | None = None, model: str | None = None,
                 temperature: float | None = None, load_arrays: bool = False) -> list[dict]:
    """Result documents of a job store, filtered by campaign, model (name or sha256) and temperature."""
    from tdphonon.campaign import query

    docs = query(store, load_arrays=load_arrays, campaign=campaign, model=model, temperature=temperature)
    if not docs:
        what = ", ".join(f"{k}={v}" for k, v in {"campaign": campaign, "model": model,
                                                    "temperature": temperature}.items() if v is not None)
        raise TDPhononError(campaign or "analysis", f"no campaign results in the store ({what or 'no filter'})")
    return docs


def pick_temperature(docs: Sequence[Mapping[str, Any]], temperature: float | None = None) -> float:
    """The temperature to analyse: ``temperature`` if given, else the most common one (ties: lowest)."""
    if temperature is not None:
        return float(temperature)
    counts: dict[float, int] = {}
    for d in docs:
        for t in d["temperatures"]:
            counts[float(t["temperature"])] = counts.get(float(t["temperature"]), 0) + 1
    if not counts:
        raise TDPhononError("analysis", "the documents hold no temperatures")
    return min(counts, key=lambda t: (-counts[t], t))


def _at(doc: Mapping[str, Any], temperature: float) -> Mapping[str, Any] | None:
    for t in doc["temperatures"]:
        if abs(float(t["temperature"]) - temperature) < 1e-6:
            return t
    return None


def _at_temperature(docs: Sequence[Mapping[str, Any]], temperature: float):
    """(document, its results at ``temperature``, its Structure) for the documents that have that T."""
    for d in docs:
        t = _at(d, temperature)
        if t is not None:
            yield d, t, Structure.from_dict(d["structure"])


def supercell_to_unitcell(structure: Structure, supercell_matrix: Sequence[Sequence[int]]) -> np.ndarray:
    """Index in ``structure`` of every atom of phonopy's supercell of it (phonopy's own mapping)."""
    from phonopy.structure.cells import get_supercell
    from pymatgen.io.phonopy import get_phonopy_structure

    sc = get_supercell(get_phonopy_structure(structure), np.asarray(supercell_matrix, dtype=int))
    u2u = sc.u2u_map  # supercell index of a unit-cell atom's representative -> unit-cell index
    return np.array([u2u[int(j)] for j in sc.s2u_map], dtype=int)


def material_frame(docs: Sequence[Mapping[str, Any]], temperature: float | None = None) -> pd.DataFrame:
    """One row per material at ``temperature`` (see :func:`pick_temperature`); indexed by label.

    Columns: formula, reduced_formula, elements, nelements, nsites, spacegroup_symbol,
    spacegroup_number, crystal_system, temperature, r_full (+ _error), r_onsite_max (+ _error),
    frequency_shift (+ _error), anharmonicity, min_frequency_thz, harmonic_min_frequency_thz,
    n_imaginary_harmonic, converged, imaginary_fixed_point (self-consistent: converged to a Φ(T) with
    imaginary modes, not a SCHA solution), n_dropped_configurations and n_clipped_atoms (the sample was
    not the full Gaussian of Σ(T): ``drop_outliers`` / ``cap_mode="clip"``), step_sensitive (the
    harmonic step check's flag; None without a check), model, model_sha256, n_atoms_supercell,
    campaign, dedup_key, structure (pymatgen Structure). Materials without that temperature are left
    out.
    """
    from tdphonon.campaign import trust_flags

    temp = pick_temperature(docs, temperature)
    rows = []
    for d, t, s in _at_temperature(docs, temp):
        h = d.get("harmonic") or {}
        rows.append({
            "label": d["label"], "formula": d["formula"], "reduced_formula": s.composition.reduced_formula,
            "elements": list(d["elements"]), "nelements": d["nelements"], "nsites": d["nsites"],
            "spacegroup_symbol": d["spacegroup_symbol"], "spacegroup_number": d["spacegroup_number"],
            "crystal_system": d["crystal_system"], "temperature": temp,
            "r_full": t["r_full"], "r_full_error": t.get("r_full_error"),
            "r_onsite_max": t["r_onsite_max"], "r_onsite_max_error": t.get("r_onsite_max_error"),
            "frequency_shift": t["frequency_shift"], "frequency_shift_error": t.get("frequency_shift_error"),
            "anharmonicity": t.get("anharmonicity"), "min_frequency_thz": t.get("min_frequency_thz"),
            "harmonic_min_frequency_thz": (h.get("imaginary") or {}).get("min_frequency"),
            "n_imaginary_harmonic": (h.get("imaginary") or {}).get("n_imaginary_commensurate"),
            "converged": t.get("converged"), **trust_flags(d, t),
            "model": d["model"].get("name"), "model_sha256": d["model_sha256"],
            "n_atoms_supercell": d["n_atoms_supercell"], "campaign": d.get("campaign"),
            "dedup_key": d["dedup_key"], "structure": s,
        })
    if not rows:
        raise TDPhononError("analysis", f"no material has results at {temp:g} K")
    return pd.DataFrame(rows).set_index("label", drop=False).rename_axis(None)


def check_exclusions(exclude: Sequence[str]) -> tuple[str, ...]:
    """``exclude`` as a tuple; ValueError for a name that is not in :data:`EXCLUSIONS`."""
    if unknown := sorted(set(exclude) - set(EXCLUSIONS)):
        raise ValueError(f"unknown exclusion(s) {unknown}; choose from {sorted(EXCLUSIONS)}")
    return tuple(exclude)


def excluded_materials(materials: pd.DataFrame, exclude: Sequence[str]) -> dict[str, str]:
    """Labels of :func:`material_frame` rows that ``exclude`` (names of :data:`EXCLUSIONS`) leaves out, with
    the reason; a material caught by several gets the first."""
    exclude = check_exclusions(exclude)
    flagged = {
        "imaginary_fixed_points": materials["imaginary_fixed_point"].map(lambda v: v is True),
        "step_sensitive": materials["step_sensitive"].map(lambda v: v is True),
        "cut_samples": (materials["n_dropped_configurations"] > 0) | (materials["n_clipped_atoms"] > 0),
    }
    out: dict[str, str] = {}
    for name in exclude:
        for label in materials.index[flagged[name].to_numpy(dtype=bool)]:
            out.setdefault(label, EXCLUSIONS[name])
    return out


def site_frame(docs: Sequence[Mapping[str, Any]], temperature: float | None = None) -> pd.DataFrame:
    """One row per symmetry-distinct site at ``temperature``.

    Columns: label, formula, spacegroup_symbol, spacegroup_number, crystal_system, temperature,
    element, multiplicity, supercell_index (representative atom in the phonon supercell),
    structure_index (that atom's site in the material's structure), r_onsite, r_onsite_material_max.
    """
    temp = pick_temperature(docs, temperature)
    rows = []
    for d, t, s in _at_temperature(docs, temp):
        to_unit = supercell_to_unitcell(s, d["supercell_matrix"])
        for site in t.get("r_onsite_sites") or []:
            idx = int(site["index"])
            if idx >= len(to_unit) or s[int(to_unit[idx])].specie.symbol != site["element"]:
                raise TDPhononError(d["label"], f"site {idx} ({site['element']}) does not map onto the stored "
                                                "structure: the document is inconsistent")
            rows.append({
                "label": d["label"], "formula": d["formula"], "spacegroup_symbol": d["spacegroup_symbol"],
                "spacegroup_number": d["spacegroup_number"], "crystal_system": d["crystal_system"],
                "temperature": temp, "element": site["element"], "multiplicity": int(site["multiplicity"]),
                "supercell_index": idx, "structure_index": int(to_unit[idx]), "r_onsite": float(site["r_onsite"]),
                "r_onsite_material_max": t["r_onsite_max"],
            })
    return pd.DataFrame(rows)
