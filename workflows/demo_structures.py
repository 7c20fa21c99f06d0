#!/usr/bin/env python
"""Structures of the analysis demonstration campaign (>= 100 real compounds, all offline).

Two sources:

* **Prototype compounds** built from experimental room-temperature lattice parameters (standard
  handbook values, e.g. CRC Handbook / Wyckoff, *Crystal Structures*; rounded to 0.01 Å) in their
  observed or high-temperature cubic/hexagonal prototype: rocksalt, CsCl, zincblende, diamond,
  wurtzite, fluorite, antifluorite, cubic perovskite ABX3 and rocksalt-ordered double perovskite
  A2BB'X6 (elpasolite). Internal coordinates are the ideal prototype ones; the campaign relaxes
  cell and positions with the MLIP, so the computed phonons belong to MLIP-relaxed structures.
  Magnetic compounds are left out (the MLIPs used here are non-magnetic).
* **The DFT reference sets** of ``../shared/reference`` (their unit cells; one per distinct
  composition + space group), when that folder exists. Their labels are recorded in the manifest
  with the reference path so ``tdphonon analyze --reference`` can compare ML and DFT harmonic
  frequencies (the paper's > 20 % outlier filter).

Usage::

    python workflows/demo_structures.py OUT_DIR [--reference ../shared/reference]

writes ``OUT_DIR/<label>.cif`` and ``OUT_DIR/manifest.json`` (label, formula, prototype, source,
lattice parameters, reference path).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pymatgen.core import Lattice, Structure
from pymatgen.io.cif import CifWriter

ROOT = Path(__file__).resolve().parents[1]

# prototype -> (space group, Wyckoff-representative fractional coordinates per species slot)
CUBIC = {
    "rocksalt": ("Fm-3m", [[0, 0, 0], [0.5, 0.5, 0.5]]),
    "cscl": ("Pm-3m", [[0, 0, 0], [0.5, 0.5, 0.5]]),
    "zincblende": ("F-43m", [[0, 0, 0], [0.25, 0.25, 0.25]]),
    "diamond": ("Fd-3m", [[0, 0, 0]]),
    "fluorite": ("Fm-3m", [[0, 0, 0], [0.25, 0.25, 0.25]]),  # AX2: A on 4a, X on 8c
    "antifluorite": ("Fm-3m", [[0.25, 0.25, 0.25], [0, 0, 0]]),  # A2X: A on 8c, X on 4a
    "perovskite": ("Pm-3m", [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0]]),  # A, B, X
    # A2BB'X6 (Fm-3m): A 8c, B 4a, B' 4b, X 24e (x, 0, 0) with the ideal x = 1/4
    "double_perovskite": ("Fm-3m", [[0.25, 0.25, 0.25], [0, 0, 0], [0.5, 0.5, 0.5], [0.25, 0, 0]]),
}

# (formula label, prototype, a [Å], species in the order of the prototype's slots)
CUBIC_COMPOUNDS: list[tuple[str, str, float, list[str]]] = [
    # rocksalt
    ("LiF", "rocksalt", 4.03, ["Li", "F"]), ("LiCl", "rocksalt", 5.13, ["Li", "Cl"]),
    ("LiBr", "rocksalt", 5.50, ["Li", "Br"]), ("NaF", "rocksalt", 4.63, ["Na", "F"]),
    ("NaCl", "rocksalt", 5.64, ["Na", "Cl"]), ("NaBr", "rocksalt", 5.97, ["Na", "Br"]),
    ("NaI", "rocksalt", 6.47, ["Na", "I"]), ("KF", "rocksalt", 5.35, ["K", "F"]),
    ("KCl", "rocksalt", 6.29, ["K", "Cl"]), ("KBr", "rocksalt", 6.60, ["K", "Br"]),
    ("KI", "rocksalt", 7.07, ["K", "I"]), ("RbCl", "rocksalt", 6.59, ["Rb", "Cl"]),
    ("RbBr", "rocksalt", 6.89, ["Rb", "Br"]), ("MgO", "rocksalt", 4.21, ["Mg", "O"]),
    ("CaO", "rocksalt", 4.81, ["Ca", "O"]), ("SrO", "rocksalt", 5.16, ["Sr", "O"]),
    ("BaO", "rocksalt", 5.52, ["Ba", "O"]), ("MgS", "rocksalt", 5.20, ["Mg", "S"]),
    ("CaS", "rocksalt", 5.69, ["Ca", "S"]), ("SrS", "rocksalt", 6.02, ["Sr", "S"]),
    ("AgCl", "rocksalt", 5.55, ["Ag", "Cl"]), ("AgBr", "rocksalt", 5.77, ["Ag", "Br"]),
    ("PbS", "rocksalt", 5.94, ["Pb", "S"]), ("PbSe", "rocksalt", 6.12, ["Pb", "Se"]),
    ("PbTe", "rocksalt", 6.46, ["Pb", "Te"]), ("SnTe", "rocksalt", 6.32, ["Sn", "Te"]),
    ("ScN", "rocksalt", 4.50, ["Sc", "N"]), ("TiC", "rocksalt", 4.33, ["Ti", "C"]),
    ("ZrC", "rocksalt", 4.70, ["Zr", "C"]), ("TiN", "rocksalt", 4.24, ["Ti", "N"]),
    # CsCl type
    ("CsCl", "cscl", 4.12, ["Cs", "Cl"]), ("CsBr", "cscl", 4.29, ["Cs", "Br"]),
    ("CsI", "cscl", 4.57, ["Cs", "I"]), ("TlCl", "cscl", 3.84, ["Tl", "Cl"]),
    ("TlBr", "cscl", 3.97, ["Tl", "Br"]), ("NiAl", "cscl", 2.89, ["Ni", "Al"]),
    ("CuZn", "cscl", 2.95, ["Cu", "Zn"]),
    # zincblende
    ("GaAs", "zincblende", 5.65, ["Ga", "As"]), ("GaP", "zincblende", 5.45, ["Ga", "P"]),
    ("GaSb", "zincblende", 6.10, ["Ga", "Sb"]), ("InP", "zincblende", 5.87, ["In", "P"]),
    ("InAs", "zincblende", 6.06, ["In", "As"]), ("InSb", "zincblende", 6.48, ["In", "Sb"]),
    ("AlP", "zincblende", 5.46, ["Al", "P"]), ("AlAs", "zincblende", 5.66, ["Al", "As"]),
    ("AlSb", "zincblende", 6.14, ["Al", "Sb"]), ("ZnS", "zincblende", 5.41, ["Zn", "S"]),
    ("ZnSe", "zincblende", 5.67, ["Zn", "Se"]), ("CdTe", "zincblende", 6.48, ["Cd", "Te"]),
    ("CuCl", "zincblende", 5.41, ["Cu", "Cl"]), ("CuBr", "zincblende", 5.69, ["Cu", "Br"]),
    ("CuI", "zincblende", 6.05, ["Cu", "I"]), ("BN", "zincblende", 3.62, ["B", "N"]),
    ("BP", "zincblende", 4.54, ["B", "P"]), ("SiC", "zincblende", 4.36, ["Si", "C"]),
    # diamond
    ("C", "diamond", 3.57, ["C"]), ("Ge", "diamond", 5.66, ["Ge"]), ("Sn", "diamond", 6.49, ["Sn"]),
    # fluorite AX2
    ("CaF2", "fluorite", 5.46, ["Ca", "F"]), ("SrF2", "fluorite", 5.80, ["Sr", "F"]),
    ("BaF2", "fluorite", 6.20, ["Ba", "F"]), ("CdF2", "fluorite", 5.39, ["Cd", "F"]),
    ("PbF2", "fluorite", 5.94, ["Pb", "F"]), ("CeO2", "fluorite", 5.41, ["Ce", "O"]),
    ("ThO2", "fluorite", 5.60, ["Th", "O"]), ("ZrO2", "fluorite", 5.07, ["Zr", "O"]),
    ("HfO2", "fluorite", 5.08, ["Hf", "O"]), ("SrCl2", "fluorite", 6.98, ["Sr", "Cl"]),
    # antifluorite A2X
    ("Li2O", "antifluorite", 4.61, ["Li", "O"]), ("Na2O", "antifluorite", 5.55, ["Na", "O"]),
    ("K2O", "antifluorite", 6.44, ["K", "O"]), ("Li2S", "antifluorite", 5.71, ["Li", "S"]),
    ("Na2S", "antifluorite", 6.54, ["Na", "S"]), ("Mg2Si", "antifluorite", 6.35, ["Mg", "Si"]),
    ("Mg2Ge", "antifluorite", 6.39, ["Mg", "Ge"]), ("Mg2Sn", "antifluorite", 6.76, ["Mg", "Sn"]),
    # cubic perovskites ABX3 (observed or high-temperature cubic phase)
    ("BaTiO3", "perovskite", 4.00, ["Ba", "Ti", "O"]), ("CaTiO3", "perovskite", 3.84, ["Ca", "Ti", "O"]),
    ("PbTiO3", "perovskite", 3.97, ["Pb", "Ti", "O"]), ("KNbO3", "perovskite", 4.02, ["K", "Nb", "O"]),
    ("KTaO3", "perovskite", 3.99, ["K", "Ta", "O"]), ("NaNbO3", "perovskite", 3.95, ["Na", "Nb", "O"]),
    ("SrZrO3", "perovskite", 4.10, ["Sr", "Zr", "O"]), ("BaZrO3", "perovskite", 4.19, ["Ba", "Zr", "O"]),
    ("BaHfO3", "perovskite", 4.17, ["Ba", "Hf", "O"]), ("BaSnO3", "perovskite", 4.12, ["Ba", "Sn", "O"]),
    ("SrSnO3", "perovskite", 4.03, ["Sr", "Sn", "O"]), ("LaAlO3", "perovskite", 3.79, ["La", "Al", "O"]),
    ("KMgF3", "perovskite", 3.99, ["K", "Mg", "F"]), ("KZnF3", "perovskite", 4.05, ["K", "Zn", "F"]),
    ("KCaF3", "perovskite", 4.38, ["K", "Ca", "F"]), ("RbCaF3", "perovskite", 4.45, ["Rb", "Ca", "F"]),
    ("CsCaF3", "perovskite", 4.52, ["Cs", "Ca", "F"]), ("CsPbCl3", "perovskite", 5.61, ["Cs", "Pb", "Cl"]),
    ("CsPbBr3", "perovskite", 5.87, ["Cs", "Pb", "Br"]), ("CsPbI3", "perovskite", 6.29, ["Cs", "Pb", "I"]),
    ("CsSnBr3", "perovskite", 5.80, ["Cs", "Sn", "Br"]), ("CsSnI3", "perovskite", 6.22, ["Cs", "Sn", "I"]),
    # double perovskites A2BB'X6 (rocksalt-ordered B sites)
    ("Ba2MgWO6", "double_perovskite", 8.10, ["Ba", "Mg", "W", "O"]),
    ("Ba2CaWO6", "double_perovskite", 8.39, ["Ba", "Ca", "W", "O"]),
    ("Ba2ZnWO6", "double_perovskite", 8.11, ["Ba", "Zn", "W", "O"]),
    ("Ba2MgMoO6", "double_perovskite", 8.09, ["Ba", "Mg", "Mo", "O"]),
    ("Ba2YNbO6", "double_perovskite", 8.44, ["Ba", "Y", "Nb", "O"]),
    ("Ba2ScNbO6", "double_perovskite", 8.24, ["Ba", "Sc", "Nb", "O"]),
    ("Cs2AgBiBr6", "double_perovskite", 11.27, ["Cs", "Ag", "Bi", "Br"]),
    ("Cs2AgBiCl6", "double_perovskite", 10.78, ["Cs", "Ag", "Bi", "Cl"]),
    ("Cs2AgInCl6", "double_perovskite", 10.47, ["Cs", "Ag", "In", "Cl"]),
    ("Cs2NaBiCl6", "double_perovskite", 10.84, ["Cs", "Na", "Bi", "Cl"]),
    ("Cs2NaInCl6", "double_perovskite", 10.53, ["Cs", "Na", "In", "Cl"]),
    ("K2NaAlF6", "double_perovskite", 8.12, ["K", "Na", "Al", "F"]),
]

# wurtzite (P6_3mc): (label, a, c, u, [A, X])
WURTZITE: list[tuple[str, float, float, float, list[str]]] = [
    ("ZnO-w", 3.25, 5.21, 0.382, ["Zn", "O"]), ("GaN", 3.19, 5.19, 0.377, ["Ga", "N"]),
    ("AlN", 3.11, 4.98, 0.382, ["Al", "N"]), ("InN", 3.54, 5.70, 0.379, ["In", "N"]),
    ("CdS", 4.14, 6.71, 0.377, ["Cd", "S"]), ("BeO", 2.70, 4.38, 0.378, ["Be", "O"]),
]


def prototype_structures() -> list[dict]:
    """The prototype compounds as ``{"label", "structure", "prototype", "lattice"}`` records."""
    from pymatgen.symmetry.groups import SpaceGroup

    # pymatgen caches SpaceGroup objects only while they are referenced (a weak-value cache), so
    # every ``Structure.from_spacegroup`` call would rebuild and de-duplicate the group's operations
    # (~0.3 s each); holding one instance per group here lets all those calls share it.
    _groups = [SpaceGroup(sg) for sg in sorted({sg for sg, _ in CUBIC.values()} | {"P6_3mc"})]
    out = []
    for label, proto, a, species in CUBIC_COMPOUNDS:
        sg, coords = CUBIC[proto]
        s = Structure.from_spacegroup(sg, Lattice.cubic(a), species, coords)
        out.append({"label": label, "structure": s, "prototype": proto, "lattice": {"a": a}})
    for label, a, c, u, species in WURTZITE:
        s = Structure.from_spacegroup("P6_3mc", Lattice.hexagonal(a, c), species,
                                      [[1 / 3, 2 / 3, 0.0], [1 / 3, 2 / 3, u]])
        out.append({"label": label, "structure": s, "prototype": "wurtzite", "lattice": {"a": a, "c": c, "u": u}})
    return out


def reference_structures(root: Path) -> list[dict]:
    """Unit cells of the DFT reference sets below ``root`` (one per composition + space group)."""
    from pymatgen.io.phonopy import get_pmg_structure

    from tdphonon.evaluation import iter_reference_sets
    from tdphonon.structures import spacegroup

    out, seen = [], set()
    for name, loader in iter_reference_sets(root):
        try:
            ref = loader()
        except Exception as exc:  # reported, not silently included
            print(f"skipped reference {name}: {type(exc).__name__}: {exc}", file=sys.stderr)
            continue
        s = get_pmg_structure(ref.phonon.unitcell)
        key = (s.composition.reduced_formula, spacegroup(s)[1])
        if key in seen:
            continue
        seen.add(key)
        label = f"ref-{s.composition.reduced_formula}-{spacegroup(s)[1]}"
        out.append({"label": label, "structure": s, "prototype": "dft-reference", "lattice": {},
                    "reference": str(Path(ref.path).resolve()), "reference_name": name})
    return out


def write(out_dir: Path, reference: Path | None) -> list[dict]:
    """Write the CIFs and ``manifest.json``; returns the manifest records."""
    out_dir.mkdir(parents=True, exist_ok=True)
    records = prototype_structures()
    if reference is not None and reference.exists():
        records += reference_structures(reference)
    manifest = []
    for r in records:
        CifWriter(r["structure"]).write_file(out_dir / f"{r['label']}.cif")
        manifest.append({"label": r["label"], "formula": r["structure"].composition.reduced_formula,
                         "prototype": r["prototype"], "lattice": r["lattice"], "source": "handbook lattice parameters"
                         if r["prototype"] != "dft-reference" else "DFT reference set",
                         "reference": r.get("reference"), "reference_name": r.get("reference_name")})
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return manifest


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--reference", type=Path, default=ROOT.parent / "shared" / "reference",
                    help="DFT reference folder to add (skipped when absent)")
    args = ap.parse_args(argv)
    man = write(args.out, args.reference)
    counts: dict[str, int] = {}
    for m in man:
        counts[m["prototype"]] = counts.get(m["prototype"], 0) + 1
    print(f"{len(man)} structures in {args.out}: {counts}")


if __name__ == "__main__":
    main()
