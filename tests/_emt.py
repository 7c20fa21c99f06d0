"""ASE EMT (a cheap, real, anharmonic potential) for tests: finite-displacement phonons and rattled data."""

from __future__ import annotations

import numpy as np


def emt_forces(atoms_list) -> list[np.ndarray]:
    """EMT forces of ASE Atoms (or phonopy cells: anything with symbols, cell, scaled_positions)."""
    from ase import Atoms
    from ase.calculators.emt import EMT

    out = []
    for c in atoms_list:
        a = c.copy() if isinstance(c, Atoms) else Atoms(c.symbols, cell=c.cell, scaled_positions=c.scaled_positions,
                                                        pbc=True)
        a.calc = EMT()
        out.append(a.get_forces().copy())
    return out


def emt_phonon(unitcell, supercell_matrix, primitive_matrix="auto"):
    """phonopy object of ``unitcell`` (PhonopyAtoms) with EMT finite-displacement force constants."""
    from phonopy import Phonopy

    ph = Phonopy(unitcell, supercell_matrix=supercell_matrix, primitive_matrix=primitive_matrix, log_level=0)
    ph.generate_displacements(distance=0.01)
    ph.forces = np.array(emt_forces(ph.supercells_with_displacements))
    ph.produce_force_constants()
    return ph


def rattled(ideal, n: int, scale: float, rng, calc=None):
    """``n`` Gaussian-rattled copies of ``ideal`` and their forces (``calc``: ASE calculator, default EMT)."""
    structures = []
    for _ in range(n):
        a = ideal.copy()
        a.positions += rng.normal(scale=scale, size=a.positions.shape)
        structures.append(a)
    if calc is None:
        return structures, emt_forces(structures)
    forces = []
    for a in structures:
        a.calc = calc
        forces.append(a.get_forces().copy())
        a.calc = None
    return structures, forces
