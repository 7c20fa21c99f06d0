"""ML harmonic phonons of one structure (0 K force constants Φ⁰).

Pipeline: validate → (optional) relax with the space group held fixed → choose the supercell →
phonopy finite displacements with batched forces → force constants with the acoustic sum rule →
frequencies on the commensurate q-points, a mesh and a band path, DOS / projected DOS, thermal
properties and imaginary-mode detection.

Units: Å, eV, amu, THz. Thermal properties are phonopy's: free energy kJ/mol, entropy and heat
capacity J/K/mol, "mol" meaning a mole of the phonopy *primitive* cell
(:attr:`HarmonicResult.atoms_per_formula` atoms).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from phonopy import Phonopy
from pymatgen.core import Structure

from tdphonon.errors import RelaxationError, StructureError
from tdphonon.potentials import Potential, deterministic_torch, hardware_info, package_versions
from tdphonon.structures import (
    from_phonopy_atoms,
    load_structure,
    phonopy_atoms_to_ase,
    spacegroup,
    to_ase,
    to_phonopy_atoms,
)

Progress = Callable[[str, int, int], None]
"""Progress callback: ``progress(step_name, done, total)``."""


# --------------------------------------------------------------------------------------------
# settings
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class HarmonicSettings:
    """Settings of an ML harmonic phonon calculation (all recorded with the result).

    Attributes
    ----------
    relax
        Relax positions (and cell) with the space group held fixed before computing phonons.
    relax_cell
        Also relax the lattice (``FrechetCellFilter``).
    fmax
        Relaxation force criterion (eV/Å).
    relax_steps
        Step budget of the relaxation; not converging raises :class:`RelaxationError`
        unless ``allow_unconverged``.
    allow_unconverged
        Continue (recording a warning) when the relaxation does not converge.
    standardize
        Use the spglib conventional standard cell as phonopy unit cell (primitive found automatically).
    supercell_matrix
        Explicit 3x3 (or 3) supercell matrix with respect to the unit cell used; overrides the
        automatic choice.
    min_length
        Automatic supercell: smallest perpendicular width (Å).
    max_atoms
        Automatic supercell: largest number of atoms.
    displacement
        Finite-displacement amplitude (Å). Always reported: some MLIPs (e.g. CHGNet on cubic
        perovskites) give step-dependent force constants.
    mesh
        Mesh for DOS / thermal properties: a length (phonopy's float mesh) or three integers.
    band_npoints
        Points per band-path segment (seekpath path).
    t_min, t_max, t_step
        Temperature grid of the thermal properties (K).
    imaginary_tol
        Frequencies below ``-imaginary_tol`` (THz) count as imaginary (acoustic Γ modes excluded).
    soft_threshold
        Modes below this frequency (THz, imaginary included) are flagged as soft.
    projected_dos
        Compute the atom-projected DOS.
    check_displacement
        A second finite-displacement step (Å) for the step-sensitivity check
        (:func:`check_step_sensitivity`: one more force set; ``None``, the default: no check).
    check_tol_thz
        The check flags the force constants as step-sensitive when a commensurate frequency
        changes by more than this (THz) between the two steps.

    The two check options enter :meth:`to_dict` (and so :meth:`digest` and the campaign keys) only
    when the check is on: settings without it keep the digests of the versions before it.
    """

    relax: bool = True
    relax_cell: bool = True
    fmax: float = 0.005
    relax_steps: int = 300
    allow_unconverged: bool = False
    standardize: bool = True
    supercell_matrix: tuple | None = None
    min_length: float = 10.0
    max_atoms: int = 260
    displacement: float = 0.01
    mesh: float | tuple[int, int, int] = 30.0
    band_npoints: int = 51
    t_min: float = 0.0
    t_max: float = 1000.0
    t_step: float = 10.0
    imaginary_tol: float = 0.05
    soft_threshold: float = 0.5
    projected_dos: bool = True
    check_displacement: float | None = None
    check_tol_thz: float = 0.1

    def __post_init__(self) -> None:
        if not (np.isfinite(self.displacement) and self.displacement > 0):
            raise ValueError(f"displacement must be a positive step in Å, got {self.displacement!r}")
        if self.check_displacement is not None:
            c = self.check_displacement
            if not (np.isfinite(c) and c > 0):
                raise ValueError(f"check_displacement must be a positive step in Å, got {c!r}")
            if abs(c - self.displacement) < 1e-9:
                raise ValueError(f"check_displacement ({c} Å) must differ from displacement ({self.displacement} Å)")
        if not (np.isfinite(self.check_tol_thz) and self.check_tol_thz > 0):
            raise ValueError(f"check_tol_thz must be positive, got {self.check_tol_thz!r}")

    def to_dict(self) -> dict:
        d = asdict(self)
        if self.check_displacement is None:  # off: the settings (and digests) of earlier versions
            d.pop("check_displacement")
            d.pop("check_tol_thz")
        if self.supercell_matrix is not None:
            d["supercell_matrix"] = np.asarray(self.supercell_matrix).tolist()
        if isinstance(self.mesh, tuple):
            d["mesh"] = list(self.mesh)
        return d

    def digest(self) -> str:
        """Stable sha256 of the settings (for duplicate detection)."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()


# --------------------------------------------------------------------------------------------
# relaxation
# --------------------------------------------------------------------------------------------
@dataclass
class RelaxReport:
    """What the symmetry-constrained relaxation did."""

    converged: bool
    steps: int
    max_force: float
    energy_per_atom: float
    spacegroup_before: str
    spacegroup_after: str
    volume_before: float
    volume_after: float
    lattice_after: list
    seconds: float

    def to_dict(self) -> dict:
        return asdict(self)


def relax_structure(
    structure: Structure,
    potential: Potential,
    *,
    fmax: float = 0.005,
    steps: int = 300,
    relax_cell: bool = True,
    label: str | None = None,
    allow_unconverged: bool = False,
) -> tuple[Structure, RelaxReport]:
    """Relax with the space group held fixed (ASE ``FixSymmetry`` + ``FrechetCellFilter``).

    Raises
    ------
    RelaxationError
        No convergence within ``steps`` (unless ``allow_unconverged``), or the space group changed.
    """
    from ase.constraints import FixSymmetry
    from ase.filters import FrechetCellFilter
    from ase.optimize import BFGS

    label = label or structure.composition.reduced_formula
    potential.check_elements([str(s) for s in structure.species], label)
    t0 = time.perf_counter()
    sg_before, _ = spacegroup(structure)
    atoms = to_ase(structure)
    atoms.calc = potential.ase_calculator()
    atoms.set_constraint(FixSymmetry(atoms, symprec=1e-3))
    target = FrechetCellFilter(atoms) if relax_cell else atoms
    opt = BFGS(target, logfile=None, maxstep=0.1)
    with deterministic_torch():  # the ASE calculator evaluates the model outside Potential's own calls
        converged = bool(opt.run(fmax=fmax, steps=steps))
        forces = atoms.get_forces()
    fmax_now = float(np.max(np.linalg.norm(forces, axis=1))) if len(atoms) else 0.0
    energy = float(atoms.get_potential_energy()) / len(atoms)
    if not np.isfinite(energy) or not np.all(np.isfinite(forces)):
        raise RelaxationError(label, "relaxation produced non-finite energies or forces")
    atoms.set_constraint()
    from pymatgen.io.ase import AseAtomsAdaptor

    relaxed = AseAtomsAdaptor.get_structure(atoms)
    sg_after, _ = spacegroup(relaxed)
    report = RelaxReport(
        converged=converged, steps=int(opt.nsteps), max_force=fmax_now, energy_per_atom=energy,
        spacegroup_before=sg_before, spacegroup_after=sg_after, volume_before=float(structure.volume),
        volume_after=float(relaxed.volume), lattice_after=relaxed.lattice.matrix.tolist(),
        seconds=time.perf_counter() - t0,
    )
    if sg_after != sg_before:
        raise RelaxationError(label, f"space group changed during relaxation: {sg_before} -> {sg_after}")
    if not converged and not allow_unconverged:
        raise RelaxationError(
            label,
            f"relaxation did not converge in {steps} steps (max force {fmax_now:.4f} eV/Å > fmax {fmax}); "
            "raise relax_steps, loosen fmax or allow_unconverged",
        )
    return relaxed, report


# --------------------------------------------------------------------------------------------
# supercell
# --------------------------------------------------------------------------------------------
def choose_supercell_matrix(structure: Structure, min_length: float = 10.0, max_atoms: int = 260) -> np.ndarray:
    """Diagonal supercell whose perpendicular widths are ≥ ``min_length`` within ``max_atoms``.

    When ``max_atoms`` forbids reaching ``min_length`` the multiplicity along the direction with the
    largest width is reduced first. At least one repetition per direction.
    """
    lat = structure.lattice.matrix
    vol = abs(np.linalg.det(lat))
    widths = np.array([vol / np.linalg.norm(np.cross(lat[(i + 1) % 3], lat[(i + 2) % 3])) for i in range(3)])
    mult = np.maximum(1, np.ceil(min_length / widths - 1e-8)).astype(int)
    while np.prod(mult) * len(structure) > max_atoms and np.any(mult > 1):
        cand = np.where(mult > 1)[0]
        k = cand[np.argmax((mult * widths)[cand])]
        mult[k] -= 1
    return np.diag(mult)


def standardize_structure(structure: Structure) -> Structure:
    """spglib conventional standard cell (phonopy's usual unit cell)."""
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    return SpacegroupAnalyzer(structure, symprec=1e-3).get_conventional_standard_structure()


# --------------------------------------------------------------------------------------------
# force constants
# --------------------------------------------------------------------------------------------
def make_phonopy(structure: Structure, supercell_matrix: np.ndarray, primitive_matrix: Any = "auto") -> Phonopy:
    """A phonopy object for ``structure`` (unit cell) and ``supercell_matrix``."""
    return Phonopy(to_phonopy_atoms(structure), supercell_matrix=np.asarray(supercell_matrix),
                   primitive_matrix=primitive_matrix)


def fresh_phonopy(phonon: Phonopy) -> Phonopy:
    """A new phonopy object with the cells, symmetry settings and atom order of ``phonon`` and none of its
    force data (phonopy's ``replicate``; ``copy`` on phonopy versions without it)."""
    return phonon.replicate(log_level=0) if hasattr(phonon, "replicate") else phonon.copy()


def supercell_atoms(phonon: Phonopy):
    """The (undisplaced) phonopy supercell as ase Atoms."""
    return phonopy_atoms_to_ase(phonon.supercell)


def compute_force_constants(
    phonon: Phonopy,
    potential: Potential,
    *,
    displacement: float = 0.01,
    label: str | None = None,
    progress: Progress | None = None,
) -> dict:
    """Finite-displacement force constants with batched forces; acoustic sum rule imposed.

    Fills ``phonon.force_constants`` (full (N, N, 3, 3) format) and returns statistics
    (number of displaced supercells, force calls, seconds, residual force of the perfect cell).
    """
    label = label or "structure"
    t0 = time.perf_counter()
    phonon.generate_displacements(distance=displacement, is_plusminus="auto")
    cells = [phonopy_atoms_to_ase(c) for c in phonon.supercells_with_displacements]
    perfect = supercell_atoms(phonon)
    labels = [f"{label} displaced supercell {i}" for i in range(len(cells))]
    forces = []
    batch = max(1, potential.batch_size)
    n_total = len(cells) + 1
    f0 = potential.forces([perfect], labels=[f"{label} perfect supercell"])[0]
    if progress:
        progress("forces", 1, n_total)
    for start in range(0, len(cells), batch):
        forces.append(potential.forces(cells[start : start + batch], labels=labels[start : start + batch]))
        if progress:
            progress("forces", min(n_total, start + batch + 1), n_total)
    forces_arr = np.concatenate(forces, axis=0)
    # subtract the residual forces of the undisplaced supercell (removes relaxation residue)
    forces_arr = forces_arr - f0[None]
    phonon.forces = forces_arr
    phonon.produce_force_constants(calculate_full_force_constants=True, show_drift=False)
    phonon.symmetrize_force_constants(show_drift=False)
    return {
        "n_displacements": len(cells),
        "force_calls": len(cells) + 1,
        "displacement": displacement,
        "residual_force_max": float(np.max(np.linalg.norm(f0, axis=1))),
        "seconds": time.perf_counter() - t0,
    }


# --------------------------------------------------------------------------------------------
# phonon properties
# --------------------------------------------------------------------------------------------
def commensurate_qpoints(phonon: Phonopy) -> np.ndarray:
    """q-points (reduced, primitive reciprocal basis) commensurate with the supercell."""
    from phonopy.harmonic.dynmat_to_fc import get_commensurate_points

    smat = np.rint(np.linalg.inv(phonon.primitive_matrix) @ phonon.supercell_matrix).astype(int) \
        if phonon.primitive_matrix is not None else np.asarray(phonon.supercell_matrix)
    return np.asarray(get_commensurate_points(smat))


def frequencies_at(phonon: Phonopy, qpoints: np.ndarray) -> np.ndarray:
    """Frequencies (THz, imaginary negative) at reduced q-points, shape (nq, nbands)."""
    phonon.run_qpoints(np.asarray(qpoints, dtype=float))
    return np.array(phonon.qpoints.frequencies)


@dataclass
class BandStructure:
    """Frequencies along a seekpath band path."""

    qpoints: list  # per segment, (npts, 3)
    distances: list  # per segment, (npts,)
    frequencies: list  # per segment, (npts, nbands)
    labels: list  # one label per segment end point, len = nsegments + 1 (merged "X|Y" at jumps)
    connections: list

    def to_dict(self) -> dict:
        return {k: [np.asarray(x).tolist() for x in v] if k in {"qpoints", "distances", "frequencies"} else v
                for k, v in asdict(self).items()}


def band_structure(phonon: Phonopy, npoints: int = 51) -> BandStructure:
    """Band structure along the seekpath path (phonopy ``auto_band_structure``)."""
    phonon.auto_band_structure(npoints=npoints, with_eigenvectors=False, plot=False, write_yaml=False)
    bs = phonon.band_structure
    labels = list(bs.labels) if getattr(bs, "labels", None) is not None else []
    conns = list(bs.path_connections) if getattr(bs, "path_connections", None) is not None else []
    return BandStructure(
        qpoints=[np.asarray(q) for q in bs.qpoints],
        distances=[np.asarray(x) for x in bs.distances],
        frequencies=[np.asarray(f) for f in bs.frequencies],
        labels=labels,
        connections=conns,
    )


@dataclass
class ImaginaryModes:
    """Imaginary / soft-mode report."""

    has_imaginary: bool
    min_frequency: float
    n_imaginary_commensurate: int
    imaginary_qpoints: list  # [(q, frequency)] on commensurate points and band path
    soft_modes: int  # count of (non-acoustic) modes below soft_threshold on the commensurate points

    def to_dict(self) -> dict:
        return asdict(self)


def detect_imaginary_modes(
    commensurate_q: np.ndarray,
    commensurate_f: np.ndarray,
    band: BandStructure | None = None,
    mesh_f: np.ndarray | None = None,
    tol: float = 0.05,
    soft_threshold: float = 0.5,
) -> ImaginaryModes:
    """Find modes below ``-tol`` THz, excluding the three acoustic modes at Γ."""

    def _nonacoustic(q, f):
        f = np.array(f, dtype=float)
        if np.allclose(q, np.round(q), atol=1e-8):  # Γ (or equivalent): drop the 3 lowest |f|
            idx = np.argsort(np.abs(f))[:3]
            f = np.delete(f, idx)
        return f

    imag = []
    fmin = np.inf
    n_comm = 0
    soft = 0
    for q, f in zip(commensurate_q, commensurate_f, strict=True):
        g = _nonacoustic(q, f)
        if g.size:
            fmin = min(fmin, float(g.min()))
            n_comm += int(np.sum(g < -tol))
            soft += int(np.sum(g < soft_threshold))
            if g.min() < -tol:
                imag.append((np.asarray(q).tolist(), float(g.min())))
    if band is not None:
        for qs, fs in zip(band.qpoints, band.frequencies, strict=True):
            for q, f in zip(qs, fs, strict=True):
                g = _nonacoustic(q, f)
                if g.size and g.min() < -tol:
                    fmin = min(fmin, float(g.min()))
                    imag.append((np.asarray(q).tolist(), float(g.min())))
    if mesh_f is not None and mesh_f.size:
        fmin_mesh = float(np.min(mesh_f[:, 3:])) if mesh_f.shape[1] > 3 else float(np.min(mesh_f))
        fmin = min(fmin, fmin_mesh)
    # deduplicate (q rounded)
    seen, uniq = set(), []
    for q, f in imag:
        key = tuple(np.round(q, 6))
        if key not in seen:
            seen.add(key)
            uniq.append((q, f))
    return ImaginaryModes(
        has_imaginary=bool(uniq) or n_comm > 0,
        min_frequency=float(fmin) if np.isfinite(fmin) else 0.0,
        n_imaginary_commensurate=n_comm,
        imaginary_qpoints=uniq[:50],
        soft_modes=soft,
    )


@dataclass
class StepCheck:
    """Force constants recomputed with a second finite-displacement step, compared with the first.

    Frequencies (THz) on the supercell's commensurate q-points, bands sorted at each q.

    Attributes
    ----------
    displacement, check_displacement
        The two steps (Å): the one of the result, and the check's.
    max_change_thz
        Largest |ν(check) − ν(displacement)| over all modes; ``qpoint_of_max_change`` is where.
    relative_change
        ‖ν(check) − ν(displacement)‖ / ‖ν(displacement)‖ over all commensurate modes.
    min_frequency_thz, n_imaginary_commensurate
        Lowest non-acoustic frequency and number of imaginary modes, at each step
        (``{"displacement": …, "check": …}``).
    step_sensitive
        ``max_change_thz > tol_thz``.
    imaginary_step_dependent
        Imaginary modes at one of the two steps only.
    message
        What was found, for logs and documents (``None`` when the force constants are step-independent).
    """

    displacement: float
    check_displacement: float
    max_change_thz: float
    qpoint_of_max_change: list
    relative_change: float
    min_frequency_thz: dict
    n_imaginary_commensurate: dict
    tol_thz: float
    step_sensitive: bool
    imaginary_step_dependent: bool
    message: str | None
    force_calls: int
    seconds: float
    frequencies: np.ndarray = field(repr=False)  # (nq, nbands) with the check step

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("frequencies")
        return d


def check_step_sensitivity(
    phonon: Phonopy,
    potential: Potential,
    displacement: float,
    check_displacement: float,
    *,
    tol_thz: float = 0.1,
    imaginary_tol: float = 0.05,
    label: str | None = None,
    progress: Progress | None = None,
) -> StepCheck:
    """Recompute the force constants of ``phonon`` with a second step and compare the frequencies.

    For a potential that is harmonic over the two steps the force constants, and so the frequencies,
    do not depend on the step. A difference means that the energy surface is not quadratic on the
    scale of the steps: a shallow double well (a real instability), strong anharmonicity, or a model
    whose energy surface is rough on the scale of the smaller step (some MLIPs; see docs/methods.md,
    harmonic step 4). Imaginary modes at one step only are the case to look at before trusting the
    material's stability verdict or its temperature-dependent phonons.

    Parameters
    ----------
    phonon
        phonopy object with the force constants computed with ``displacement`` (left unchanged).
    potential
        The potential that gave them.
    displacement, check_displacement
        The step of ``phonon``'s force constants and the step of the check (Å).
    tol_thz
        Threshold of ``step_sensitive`` on the largest frequency change.
    imaginary_tol
        Frequencies below ``-imaginary_tol`` (THz) count as imaginary (acoustic Γ modes excluded).
    label
        Material name for messages.
    progress
        Optional progress callback.
    """
    label = label or "structure"
    t0 = time.perf_counter()
    calls0 = potential.force_calls
    other = fresh_phonopy(phonon)
    compute_force_constants(other, potential, displacement=check_displacement,
                            label=f"{label} (step check {check_displacement:g} Å)", progress=progress)
    cq = commensurate_qpoints(phonon)
    ref = frequencies_at(phonon, cq)
    chk = frequencies_at(other, cq)
    diff = np.abs(chk - ref)
    iq = int(np.unravel_index(np.argmax(diff), diff.shape)[0])
    max_change = float(diff.max())
    imag = {name: detect_imaginary_modes(cq, f, tol=imaginary_tol) for name, f in (("displacement", ref),
                                                                                     ("check", chk))}
    n_imag = {k: v.n_imaginary_commensurate for k, v in imag.items()}
    sensitive = max_change > tol_thz
    imag_dependent = (n_imag["displacement"] > 0) != (n_imag["check"] > 0)
    message = None
    if imag_dependent:
        message = (f"{label}: imaginary modes at one finite-displacement step only ({n_imag['displacement']} at "
                   f"{displacement:g} Å, {n_imag['check']} at {check_displacement:g} Å; lowest "
                   f"{imag['displacement'].min_frequency:.3f} / {imag['check'].min_frequency:.3f} THz): its harmonic "
                   "stability depends on the step. Either the model's energy surface is rough at the smaller step "
                   "(compare another model) or the modes sit in a shallow double well (a real instability)")
    elif sensitive:
        message = (f"{label}: commensurate frequencies change by up to {max_change:.3f} THz (at q = "
                   f"{np.round(cq[iq], 4).tolist()}) between finite-displacement steps {displacement:g} and "
                   f"{check_displacement:g} Å: the force constants depend on the step")
    norm = float(np.linalg.norm(ref))
    return StepCheck(
        displacement=float(displacement), check_displacement=float(check_displacement), max_change_thz=max_change,
        qpoint_of_max_change=np.asarray(cq[iq], dtype=float).tolist(),
        relative_change=float(np.linalg.norm(chk - ref) / norm) if norm > 0 else 0.0,
        min_frequency_thz={k: v.min_frequency for k, v in imag.items()}, n_imaginary_commensurate=n_imag,
        tol_thz=float(tol_thz), step_sensitive=bool(sensitive), imaginary_step_dependent=bool(imag_dependent),
        message=message, force_calls=potential.force_calls - calls0, seconds=time.perf_counter() - t0,
        frequencies=chk,
    )


@dataclass
class PhononProperties:
    """Everything derived from one set of force constants (0 K or an effective Φ(T))."""

    commensurate_qpoints: np.ndarray
    commensurate_frequencies: np.ndarray
    band: BandStructure
    mesh_numbers: list
    dos_frequencies: np.ndarray
    dos: np.ndarray
    pdos: np.ndarray | None  # (n_primitive_atoms, n_freq)
    thermal: dict  # temperatures, free_energy, entropy, heat_capacity (phonopy units)
    imaginary: ImaginaryModes

    def summary(self) -> dict:
        t = np.asarray(self.thermal["temperatures"])
        i300 = int(np.argmin(np.abs(t - 300.0))) if t.size else None
        return {
            "commensurate_qpoints": np.asarray(self.commensurate_qpoints).tolist(),
            "commensurate_frequencies_thz": np.round(self.commensurate_frequencies, 6).tolist(),
            "max_frequency_thz": float(np.max(self.commensurate_frequencies)),
            "imaginary": self.imaginary.to_dict(),
            "thermal_300K": None if i300 is None else {
                "temperature": float(t[i300]),
                "free_energy_kj_mol": float(self.thermal["free_energy"][i300]),
                "entropy_j_k_mol": float(self.thermal["entropy"][i300]),
                "heat_capacity_j_k_mol": float(self.thermal["heat_capacity"][i300]),
            },
            "mesh": list(self.mesh_numbers),
        }


def phonon_properties(phonon: Phonopy, settings: HarmonicSettings | None = None) -> PhononProperties:
    """Frequencies, band path, DOS/PDOS, thermal properties and imaginary modes of ``phonon``."""
    s = settings or HarmonicSettings()
    cq = commensurate_qpoints(phonon)
    cf = frequencies_at(phonon, cq)
    band = band_structure(phonon, s.band_npoints)
    mesh = list(s.mesh) if isinstance(s.mesh, tuple | list) else s.mesh
    pdos = None
    if s.projected_dos:
        phonon.run_mesh(mesh, with_eigenvectors=True, is_mesh_symmetry=False)
        phonon.run_projected_dos()
        pdos = np.asarray(phonon.projected_dos.projected_dos)
    phonon.run_mesh(mesh, is_gamma_center=True)
    phonon.run_total_dos()
    td = phonon.total_dos
    phonon.run_thermal_properties(t_min=s.t_min, t_max=s.t_max, t_step=s.t_step)
    thermal = dict(zip(("temperatures", "free_energy", "entropy", "heat_capacity"),
                       (np.asarray(x) for x in phonon.thermal_properties.thermal_properties), strict=True))
    imag = detect_imaginary_modes(cq, cf, band, None, s.imaginary_tol, s.soft_threshold)
    if pdos is not None and pdos.shape[1] != len(td.frequency_points):
        pdos = None
    return PhononProperties(
        commensurate_qpoints=cq, commensurate_frequencies=cf, band=band,
        mesh_numbers=list(np.asarray(phonon.mesh_numbers).tolist()),
        dos_frequencies=np.asarray(td.frequency_points), dos=np.asarray(td.dos),
        pdos=pdos, thermal=thermal, imaginary=imag,
    )


# --------------------------------------------------------------------------------------------
# the result and the driver
# --------------------------------------------------------------------------------------------
@dataclass
class HarmonicResult:
    """ML harmonic phonons of one structure.

    Attributes
    ----------
    label
        Material name.
    structure
        Structure the phonons were computed for (relaxed if relaxation was on).
    phonon
        phonopy object with the force constants Φ⁰ (full format, supercell atom order).
    properties
        Derived properties (:class:`PhononProperties`).
    model
        Model identity (dict, with sha256).
    settings
        :class:`HarmonicSettings` used.
    relax
        Relaxation report or ``None``.
    fc_stats
        Finite-displacement statistics (displacements, force calls, seconds).
    timings
        Seconds per step.
    provenance
        Package versions, hardware, time.
    step_check
        :class:`StepCheck` when ``settings.check_displacement`` is set, else ``None``.
    """

    label: str
    structure: Structure
    phonon: Phonopy
    properties: PhononProperties
    model: dict
    settings: HarmonicSettings
    relax: RelaxReport | None
    fc_stats: dict
    timings: dict = field(default_factory=dict)
    provenance: dict = field(default_factory=dict)
    step_check: StepCheck | None = None

    @property
    def force_constants(self) -> np.ndarray:
        return np.asarray(self.phonon.force_constants)

    @property
    def supercell_matrix(self) -> np.ndarray:
        return np.asarray(self.phonon.supercell_matrix)

    @property
    def atoms_per_formula(self) -> int:
        return len(self.phonon.primitive)

    def summary(self) -> dict:
        """JSON-serialisable summary (no big arrays besides commensurate frequencies)."""
        sg = spacegroup(self.structure)
        extra = {} if self.step_check is None else {"step_check": self.step_check.to_dict()}
        return {
            "label": self.label,
            "formula": self.structure.composition.reduced_formula,
            "spacegroup": {"symbol": sg[0], "number": sg[1]},
            "n_atoms_unitcell": len(self.structure),
            "n_atoms_primitive": len(self.phonon.primitive),
            "n_atoms_supercell": len(self.phonon.supercell),
            "supercell_matrix": self.supercell_matrix.tolist(),
            "lattice": self.structure.lattice.matrix.tolist(),
            "model": self.model,
            "settings": self.settings.to_dict(),
            "relax": self.relax.to_dict() if self.relax else None,
            "force_constants": self.fc_stats,
            "phonons": self.properties.summary(),
            "timings_s": self.timings,
            "provenance": self.provenance,
            "units": {"frequency": "THz", "free_energy": "kJ/mol (primitive cell)",
                      "entropy": "J/K/mol", "heat_capacity": "J/K/mol", "length": "Å", "energy": "eV"},
            **extra,
        }

    def save(self, out_dir: str | Path, prefix: str = "") -> dict[str, Path]:
        """Write ``phonopy.yaml`` (with force constants, readable by phonopy) and ``summary.json``."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        yaml_path = out / f"{prefix}phonopy.yaml"
        save_phonopy_yaml(self.phonon, yaml_path)
        json_path = out / f"{prefix}summary.json"
        json_path.write_text(json.dumps(self.summary(), indent=2, default=_json_default))
        return {"phonopy_yaml": yaml_path, "summary_json": json_path}


def save_phonopy_yaml(phonon: Phonopy, path: str | Path) -> Path:
    """Save a phonopy yaml with the force constants (``phonopy.load(path)`` reads it back)."""
    phonon.save(filename=str(path), settings={"force_constants": True, "displacements": False,
                                              "force_sets": False})
    return Path(path)


def _json_default(o: Any):
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o)}")


def harmonic_phonons(
    structure: Structure | str | Path,
    potential: Potential,
    settings: HarmonicSettings | None = None,
    *,
    label: str | None = None,
    progress: Progress | None = None,
) -> HarmonicResult:
    """ML harmonic phonons of one structure.

    Parameters
    ----------
    structure
        Structure or a file readable by pymatgen (CIF, POSCAR...).
    potential
        A loaded :class:`~tdphonon.potentials.Potential`.
    settings
        :class:`HarmonicSettings` (defaults if ``None``).
    label
        Material name used in errors and outputs.
    progress
        Optional progress callback ``(step, done, total)``.

    With ``settings.check_displacement`` the force constants are computed a second time with that
    step and compared (:func:`check_step_sensitivity`; ``result.step_check``, ``summary()["step_check"]``);
    the result itself keeps the force constants of ``settings.displacement``.

    Raises
    ------
    StructureError, UnsupportedElementsError, RelaxationError, UnphysicalForcesError
        With the material's label and the reason.
    """
    s = settings or HarmonicSettings()
    t_start = time.perf_counter()
    if not isinstance(structure, Structure):
        label = label or Path(structure).stem
    struct = load_structure(structure, label)
    label = label or struct.composition.reduced_formula
    potential.check_elements([str(e) for e in struct.composition.elements], label)
    calls0 = potential.force_calls
    timings: dict[str, float] = {}
    relax_report = None
    if s.relax:
        if progress:
            progress("relax", 0, 1)
        struct, relax_report = relax_structure(
            struct, potential, fmax=s.fmax, steps=s.relax_steps, relax_cell=s.relax_cell, label=label,
            allow_unconverged=s.allow_unconverged,
        )
        timings["relax"] = relax_report.seconds
        if progress:
            progress("relax", 1, 1)
    if s.supercell_matrix is not None:
        smat = np.asarray(s.supercell_matrix, dtype=int)
        if smat.shape == (3,):
            smat = np.diag(smat)
        if smat.shape != (3, 3) or round(abs(np.linalg.det(smat))) < 1:
            raise StructureError(label, f"invalid supercell matrix {np.asarray(s.supercell_matrix).tolist()}")
        unit = standardize_structure(struct) if s.standardize else struct
    else:
        unit = standardize_structure(struct) if s.standardize else struct
        smat = choose_supercell_matrix(unit, s.min_length, s.max_atoms)
    phonon = make_phonopy(unit, smat)
    fc_stats = compute_force_constants(phonon, potential, displacement=s.displacement, label=label,
                                       progress=progress)
    timings["force_constants"] = fc_stats["seconds"]
    t0 = time.perf_counter()
    props = phonon_properties(phonon, s)
    timings["properties"] = time.perf_counter() - t0
    step_check = None
    if s.check_displacement is not None:
        step_check = check_step_sensitivity(phonon, potential, s.displacement, s.check_displacement,
                                            tol_thz=s.check_tol_thz, imaginary_tol=s.imaginary_tol, label=label,
                                            progress=progress)
        timings["step_check"] = step_check.seconds
    timings["total"] = time.perf_counter() - t_start
    fc_stats["force_calls_total"] = potential.force_calls - calls0
    return HarmonicResult(
        label=label, structure=from_phonopy_atoms(phonon.unitcell), phonon=phonon, properties=props,
        model=potential.identity.to_dict(), settings=s, relax=relax_report, fc_stats=fc_stats, timings=timings,
        provenance={"packages": package_versions(), "hardware": hardware_info(potential.device),
                    "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")},
        step_check=step_check,
    )
