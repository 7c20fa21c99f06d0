"""Reading, validating and converting crystal structures.

Accepted inputs: a :class:`pymatgen.core.Structure`, an :class:`ase.Atoms`, or a file that pymatgen
reads (CIF, POSCAR/CONTCAR/``*.vasp``, ...). Bad inputs raise :class:`~tdphonon.errors.StructureError`
naming the material and the problem.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from ase import Atoms
from pymatgen.core import Structure

from tdphonon.errors import StructureError

#: Two atoms closer than this (Å) are "overlapping".
DEFAULT_MIN_DISTANCE = 0.7


def structure_label(structure: Structure, source: str | os.PathLike | None = None) -> str:
    """A human-readable label: file stem if any, else the reduced formula."""
    if source is not None and not isinstance(source, Structure | Atoms):
        return Path(source).stem
    return structure.composition.reduced_formula


def load_structure(source: str | os.PathLike | Structure | Atoms, label: str | None = None) -> Structure:
    """Read a structure from a file or convert an ASE/pymatgen object, then validate it.

    Raises
    ------
    StructureError
        Unreadable file, non-3D-periodic cell, partial occupancies, overlapping atoms.
    """
    if isinstance(source, Structure):
        structure = source.copy()
    elif isinstance(source, Atoms):
        if not all(source.pbc):
            raise StructureError(label or source.get_chemical_formula(),
                                 f"structure is not periodic in 3D (pbc={source.pbc.tolist()})")
        from pymatgen.io.ase import AseAtomsAdaptor

        structure = AseAtomsAdaptor.get_structure(source)
    else:
        path = Path(source)
        label = label or path.stem
        if not path.exists():
            raise StructureError(label, f"structure file {path} does not exist")
        try:
            structure = Structure.from_file(str(path))
        except Exception as exc:  # pymatgen raises many kinds
            raise StructureError(label, f"could not read {path}: {exc}") from exc
    validate_structure(structure, label or structure.composition.reduced_formula)
    return structure


def validate_structure(structure: Structure, label: str, min_distance: float = DEFAULT_MIN_DISTANCE) -> None:
    """Check that a structure can be used for phonons.

    Raises
    ------
    StructureError
        Partial occupancies / disorder, a degenerate (non-3D) cell, or atoms closer than ``min_distance``.
    """
    if len(structure) == 0:
        raise StructureError(label, "structure has no atoms")
    if not structure.is_ordered:
        bad = [i for i, s in enumerate(structure) if not s.is_ordered]
        raise StructureError(label, f"partial occupancies on sites {bad[:10]}: phonons need an ordered structure")
    vol = structure.lattice.volume
    if not np.isfinite(vol) or vol < 1e-3 * len(structure):
        raise StructureError(label, f"cell is degenerate (volume {vol:.3g} Å^3): structure must be 3D periodic")
    if not np.all(np.isfinite(structure.cart_coords)):
        raise StructureError(label, "non-finite atomic coordinates")
    vpa = vol / len(structure)
    if vpa > 500:
        raise StructureError(
            label, f"volume per atom is {vpa:.0f} Å^3: a slab, molecule or vacuum-padded cell is not a 3D crystal"
        )
    if len(structure) > 1 or min(structure.lattice.abc) < min_distance:
        dm = structure.distance_matrix if len(structure) > 1 else np.zeros((1, 1))
        np.fill_diagonal(dm, np.inf)
        # an atom must also not overlap its own periodic image
        self_image = min(structure.lattice.abc)
        dmin = float(min(dm.min(), self_image))
        if dmin < min_distance:
            if dm.min() <= self_image:
                i, j = np.unravel_index(np.argmin(dm), dm.shape)
                what = f"atoms {i} ({structure[i].specie}) and {j} ({structure[j].specie})"
            else:
                what = "an atom and its periodic image"
            raise StructureError(label, f"overlapping atoms: {what} are {dmin:.3f} Å apart (< {min_distance} Å)")


def to_ase(structure: Structure) -> Atoms:
    """pymatgen Structure → ase Atoms (periodic)."""
    from pymatgen.io.ase import AseAtomsAdaptor

    return AseAtomsAdaptor.get_atoms(structure)


def phonopy_atoms_to_ase(cell) -> Atoms:
    """PhonopyAtoms → ase Atoms with the same masses."""
    return Atoms(symbols=list(cell.symbols), cell=np.array(cell.cell), scaled_positions=np.array(cell.scaled_positions),
                 masses=np.array(cell.masses), pbc=True)


def to_phonopy_atoms(structure: Structure):
    """pymatgen Structure → PhonopyAtoms."""
    from pymatgen.io.phonopy import get_phonopy_structure

    return get_phonopy_structure(structure)


def from_phonopy_atoms(cell) -> Structure:
    """PhonopyAtoms → pymatgen Structure."""
    from pymatgen.io.phonopy import get_pmg_structure

    return get_pmg_structure(cell)


def spacegroup(structure: Structure, symprec: float = 1e-3) -> tuple[str, int]:
    """International symbol and number (spglib through pymatgen)."""
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    sga = SpacegroupAnalyzer(structure, symprec=symprec)
    return sga.get_space_group_symbol(), int(sga.get_space_group_number())


def structure_fingerprint(structure: Structure, symprec: float = 1e-3) -> str:
    """A digest identifying a structure independent of atom order / origin (for duplicate detection).

    Built from the reduced formula, space group and the sorted, rounded Niggli-reduced lattice
    parameters and volume per atom of the primitive standard cell.
    """
    import hashlib

    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    sga = SpacegroupAnalyzer(structure, symprec=symprec)
    prim = sga.get_primitive_standard_structure()
    lat = prim.lattice.get_niggli_reduced_lattice()
    key = "|".join([
        prim.composition.reduced_formula,
        str(sga.get_space_group_number()),
        ",".join(f"{x:.3f}" for x in sorted(lat.abc)),
        ",".join(f"{x:.2f}" for x in sorted(lat.angles)),
        f"{prim.volume / len(prim):.3f}",
    ])
    return hashlib.sha256(key.encode()).hexdigest()[:32]
