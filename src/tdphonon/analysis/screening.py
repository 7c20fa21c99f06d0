"""Screening for strongly anharmonic sites, structural prototypes, export to the validation branch.

* :func:`screen` — symmetry-distinct sites with R_onsite ≥ threshold (paper: 0.15).
* :func:`prototype_labels` — structural prototypes with pymatgen's AFLOW prototype matcher (its
  library, the 288 prototypes of AFLOW part 1, ships inside pymatgen, so this works offline). Structures that
  match no prototype get an equivalent offline label ``<anonymous formula>_<Pearson symbol>_<space
  group number>`` (the AFLOW label without Wyckoff letters), marked ``source="spglib"``.
* :func:`export_candidates` — the candidate materials as a JSON list ``[{"label", "structure",
  "sites"}]`` plus CIFs, which ``tdphonon campaign`` / ``submit`` and the validation branch read
  directly (:func:`tdphonon.campaign.read_inputs`).
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pymatgen.core import Structure

from tdphonon.analysis.trends import pyplot

__all__ = ["DEFAULT_THRESHOLD", "export_candidates", "plot_prototypes", "prototype_labels", "screen"]

DEFAULT_THRESHOLD = 0.15


def screen(sites: pd.DataFrame, threshold: float = DEFAULT_THRESHOLD) -> pd.DataFrame:
    """Sites with R_onsite ≥ ``threshold``, most anharmonic first."""
    cols = ["label", "formula", "spacegroup_symbol", "spacegroup_number", "element", "structure_index",
            "multiplicity", "r_onsite"]
    cand = sites.loc[sites["r_onsite"] >= threshold, cols]
    return cand.sort_values(["r_onsite", "label"], ascending=[False, True]).reset_index(drop=True)


#: pymatgen prototype matchers by :func:`_match_key`; key ``None``: the whole-library matcher of
#: pymatgen versions before ``PrototypeDatabaseMatcher`` (2026.5)
_MATCHERS: dict[tuple | None, Any] = {}
_LIBRARY_KEYS: list[tuple] = []


def _match_key(structure: Structure) -> tuple[tuple[float, ...], int]:
    """What a structure must share with a prototype for pymatgen's matcher to fit them.

    The matcher reduces both to the Niggli-reduced primitive cell and calls
    ``StructureMatcher.fit_anonymous`` without supercells or subsets: that needs the same number of
    sites, and a species mapping under which the reduced formulas agree (SpeciesComparator), i.e.
    the same sorted atomic fractions of the species (oxidation states kept, as it sees them).
    """
    amounts = list(structure.composition.values())
    total = sum(amounts)
    primitive = structure.get_reduced_structure(reduction_algo="niggli").get_primitive_structure()
    return tuple(sorted(a / total for a in amounts)), len(primitive)


def _prototype_matcher(structure: Structure):
    """pymatgen's AFLOW prototype matcher over the prototypes that can match ``structure`` (or None).

    The matcher fits every library prototype in turn and, while several match, tightens the
    tolerances and fits them all again; restricting the library to the prototypes with the same
    :func:`_match_key` gives the same matches (the others never fit) at a fraction of the cost.
    """
    try:
        from pymatgen.analysis.prototypes import AFLOW_PROTOTYPE_LIBRARY, PrototypeDatabaseMatcher
    except ImportError:  # pymatgen < 2026.5: only the (since deprecated) whole-library class
        from pymatgen.analysis.prototypes import AflowPrototypeMatcher

        if None not in _MATCHERS:
            _MATCHERS[None] = AflowPrototypeMatcher()
        return _MATCHERS[None]
    if not _LIBRARY_KEYS:
        _LIBRARY_KEYS.extend(_match_key(row["snl"].structure) for row in AFLOW_PROTOTYPE_LIBRARY)
    key = _match_key(structure)
    if key not in _MATCHERS:
        rows = [row for row, k in zip(AFLOW_PROTOTYPE_LIBRARY, _LIBRARY_KEYS, strict=True) if k == key]
        _MATCHERS[key] = PrototypeDatabaseMatcher(pd.DataFrame(rows)) if rows else None
    return _MATCHERS[key]


def _pearson(structure: Structure) -> tuple[str, int]:
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    sga = SpacegroupAnalyzer(structure, symprec=1e-3)
    conv = sga.get_conventional_standard_structure()
    centring = sga.get_space_group_symbol()[0]
    letter = {"triclinic": "a", "monoclinic": "m", "orthorhombic": "o", "tetragonal": "t", "trigonal": "h",
              "hexagonal": "h", "cubic": "c"}[sga.get_crystal_system()]
    if letter == "h" and centring == "R":
        centring = "R"
    return f"{letter}{centring}{len(conv)}", sga.get_space_group_number()


def prototype_labels(structures: Mapping[str, Structure]) -> pd.DataFrame:
    """Prototype of each structure (index: label).

    Columns: prototype (mineral name or the AFLOW label), aflow, strukturbericht, pearson,
    source ("aflow" when matched in pymatgen's prototype library, else "spglib").
    """
    rows = []
    for label, s in structures.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            matcher = _prototype_matcher(s)
            tags = matcher.get_prototypes(s) if matcher is not None else None
        if tags:
            t = tags[0]["tags"] if "tags" in tags[0] else tags[0]
            name = t.get("mineral") or t.get("aflow")
            rows.append({"label": label, "prototype": name, "aflow": t.get("aflow"),
                         "strukturbericht": t.get("strukturbericht"), "pearson": t.get("pearson"),
                         "source": "aflow"})
        else:
            pearson, sg = _pearson(s)
            anon = s.composition.anonymized_formula
            rows.append({"label": label, "prototype": f"{anon}_{pearson}_{sg}", "aflow": None,
                         "strukturbericht": None, "pearson": pearson, "source": "spglib"})
    return pd.DataFrame(rows).set_index("label", drop=False).rename_axis(None)


def plot_prototypes(materials: pd.DataFrame, path: str | Path, column: str = "r_onsite_max",
                    min_count: int = 2, threshold: float | None = DEFAULT_THRESHOLD) -> pd.DataFrame:
    """Distribution of ``column`` per prototype (prototypes with ≥ ``min_count`` materials); returns the table.

    ``materials`` needs a ``prototype`` column. Log-scale box plots with the individual materials.
    """
    plt = pyplot()
    g = materials.groupby("prototype")[column]
    table = pd.DataFrame({"n_materials": g.size(), "median": g.median(), "mean": g.mean(), "max": g.max(),
                          "n_above_threshold": g.apply(lambda v: int((v >= threshold).sum()) if threshold else 0)})
    table = table.sort_values("median", ascending=False)
    shown = table[table["n_materials"] >= min_count]
    fig, ax = plt.subplots(figsize=(max(5.0, 0.6 * len(shown) + 2), 4.5))
    data = [np.clip(materials.loc[materials["prototype"] == p, column].to_numpy(float), 1e-5, None)
            for p in shown.index]
    if data:
        ax.boxplot(data, showfliers=False)
        rng = np.random.default_rng(0)
        for i, v in enumerate(data, start=1):
            ax.scatter(i + rng.uniform(-0.15, 0.15, v.size), v, s=10, alpha=0.7, color="#4477aa", zorder=3)
        ax.set_xticks(range(1, len(shown) + 1))
        ax.set_xticklabels([f"{p} ({n})" for p, n in zip(shown.index, shown["n_materials"], strict=True)],
                           rotation=60, ha="right", fontsize=7)
    ax.set_yscale("log")
    if threshold:
        ax.axhline(threshold, color="crimson", ls="--", lw=1, label=f"screening threshold {threshold:g}")
        ax.legend(fontsize=7)
    ax.set_ylabel(column.replace("_", " "))
    ax.set_title(f"{column.replace('_', ' ')} per structural prototype (≥ {min_count} materials)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return table


def export_candidates(candidates: pd.DataFrame, materials: pd.DataFrame, out_dir: str | Path) -> Path:
    """Write ``candidates.json`` (``[{"label", "structure", "formula", "spacegroup", "sites"}]``) and CIFs.

    ``materials`` (indexed by label) supplies the structures. The JSON is a material list that
    :func:`tdphonon.campaign.read_inputs` accepts, so the candidates can be submitted as the input
    of the validation branch or of a follow-up campaign.
    """
    d = Path(out_dir)
    (d / "cif").mkdir(parents=True, exist_ok=True)
    entries = []
    for label, grp in candidates.groupby("label", sort=False):
        s: Structure = materials.loc[label, "structure"]
        s.to(filename=str(d / "cif" / f"{label}.cif"))
        entries.append({"label": label, "formula": materials.loc[label, "formula"],
                        "spacegroup": materials.loc[label, "spacegroup_symbol"], "structure": s.as_dict(),
                        "sites": grp[["element", "structure_index", "multiplicity", "r_onsite"]].to_dict("records")})
    path = d / "candidates.json"
    path.write_text(json.dumps(entries, indent=1, default=float))
    return path
