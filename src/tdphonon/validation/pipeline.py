"""The validation chain for one material, as pure functions over a reference calculator.

relax → harmonic phonons (phonopy finite displacements) → displaced configurations (thermal from
Φ₂ at ``sampling_temperature``, or fixed-amplitude rattles) → 3rd/4th-order IFCs fitted to the
anharmonic part of the forces (hiPhive, cutoffs as neighbour shells) → SCPH at each T (scanned from
high to low with warm starts) → κ_L with phono3py for HA+3ph and SCPH+3ph.

The *reference calculator* is any :class:`tdphonon.potentials.Potential`: a DFT code through ASE
(:func:`tdphonon.validation.calculators.reference_potential`: Quantum ESPRESSO, GPAW), an MLIP or
an analytic potential (tests). In a FireWorks campaign the same steps run as jobs of
:class:`tdphonon.validation.flows.ValidationMaker`.

Harmonic part: Φ₂ from finite displacements, symmetrised (symfc projector). Anharmonic part: Φ₃
and Φ₄ fitted to the residual forces F − (−Φ₂u) with the second-order parameters fixed to zero:
a free second-order term would absorb the thermal renormalisation contained in large-amplitude
data, which SCPH then adds a second time. (``fit_second_order=True`` frees it and adds the fitted
correction to Φ₂, for data where that is wanted.)

Units: Å, eV, THz, K; κ in W m⁻¹ K⁻¹.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from pymatgen.core import Structure

from tdphonon.errors import TDPhononError

__all__ = [
    "ValidationResult",
    "ValidationSettings",
    "anharmonic_step",
    "configurations_step",
    "displaced_atoms",
    "fit_anharmonic",
    "forces_step",
    "harmonic_from_forces",
    "harmonic_setup",
    "harmonic_step",
    "named_frequencies",
    "run_validation",
    "sample_configurations",
]


@dataclass(frozen=True)
class ValidationSettings:
    """Settings of the validation chain (recorded with every result).

    Attributes
    ----------
    relax
        Relax cell and positions with the reference calculator (space group fixed).
    supercell_matrix, min_length, max_atoms
        Supercell (explicit, or the automatic choice of :func:`tdphonon.harmonic.choose_supercell_matrix`).
    displacement
        Finite-displacement amplitude of the harmonic step (Å).
    n_configurations
        Displaced configurations for the anharmonic fit (the SrTiO3 DFT set has 40).
    sampling
        ``"thermal"`` (quantum Σ(T) of Φ₂ at ``sampling_temperature``, imaginary modes by |ν|) or
        ``"rattle"`` (Gaussian rattles of ``rattle_amplitude`` Å rms per Cartesian component).
    shells
        Neighbour shells per order for the fit: the paper's 3rd order up to the 4th shell, 4th order
        up to the 2nd; the order-2 cutoff only matters with ``fit_second_order``.
    fit_method
        trainstation method (``least-squares``, ``lasso``, ...).
    temperatures
        K, for SCPH and κ.
    scph_mixing, scph_tol_thz, scph_max_iterations
        SCPH iteration.
    scph_q_mesh
        Dense q-mesh of the SCPH covariance (Fourier interpolation; ``None``: the supercell's
        commensurate q-points).
    kappa_mesh, kappa_convergence_meshes
        q-mesh of κ and the meshes of the convergence check (the last one should equal ``kappa_mesh``).
    seed
        Sampling seed.
    """

    relax: bool = True
    supercell_matrix: tuple | None = None
    min_length: float = 8.0
    max_atoms: int = 160
    displacement: float = 0.01
    n_configurations: int = 40
    sampling: str = "thermal"
    sampling_temperature: float = 300.0
    rattle_amplitude: float = 0.03
    shells: tuple[tuple[int, int], ...] = ((2, 1), (3, 4), (4, 2))
    fit_method: str = "least-squares"
    fit_second_order: bool = False
    temperatures: tuple[float, ...] = (100.0, 300.0, 600.0)
    scph_mixing: float = 0.5
    scph_tol_thz: float = 1e-3
    scph_max_iterations: int = 300
    scph_q_mesh: tuple[int, int, int] | None = None
    kappa_mesh: tuple[int, int, int] = (10, 10, 10)
    kappa_convergence_meshes: tuple[tuple[int, int, int], ...] = ((6, 6, 6), (8, 8, 8), (10, 10, 10))
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["shells"] = {str(k): v for k, v in self.shells}
        return d


@dataclass
class ValidationResult:
    """Everything the comparison document needs (arrays kept for κ and plots)."""

    label: str
    structure: Structure
    supercell_matrix: np.ndarray
    fc2: np.ndarray = field(repr=False)
    fc2_temperature: dict[float, np.ndarray] = field(repr=False, default_factory=dict)
    fit: dict[str, Any] = field(default_factory=dict)
    scph: dict[float, dict[str, Any]] = field(default_factory=dict)
    named_qpoints: dict[str, list[float]] = field(default_factory=dict)
    named_frequencies: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    kappa_ha: dict[str, Any] = field(default_factory=dict)
    kappa_scph: dict[str, Any] = field(default_factory=dict)
    kappa_convergence: dict[str, Any] = field(default_factory=dict)
    gamma: dict[str, Any] = field(default_factory=dict, repr=False)
    r_onsite: dict[float, float] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    calculator: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    force_calls: int = 0

    def summary(self) -> dict[str, Any]:
        """JSON-serialisable summary (no force-constant arrays)."""
        return {"label": self.label, "formula": self.structure.composition.reduced_formula,
                "supercell_matrix": np.asarray(self.supercell_matrix).tolist(), "fit": self.fit,
                "scph": {f"{t:g}": v for t, v in self.scph.items()}, "named_qpoints": self.named_qpoints,
                "named_frequencies": self.named_frequencies,
                "kappa_ha_3ph": self.kappa_ha, "kappa_scph_3ph": self.kappa_scph,
                "kappa_convergence": self.kappa_convergence,
                "r_onsite_max": {f"{t:g}": v for t, v in self.r_onsite.items()}, "settings": self.settings,
                "calculator": self.calculator, "timings": self.timings, "force_calls": self.force_calls}


def sample_configurations(phonon, fc2: np.ndarray, settings: ValidationSettings, label: str = "material"):
    """Displaced supercells (ASE) for the anharmonic fit and their displacements (n, N, 3)."""
    from tdphonon.sampling import normal_modes, sample_displacements, supercell_to_ase, thermal_covariance

    ref = supercell_to_ase(phonon.supercell)
    if settings.sampling == "thermal":
        cov = thermal_covariance(normal_modes(phonon.supercell, fc2, phonon.primitive), settings.sampling_temperature)
        s = sample_displacements(cov, ref, settings.n_configurations, seed=settings.seed, cap_mode="clip",
                                 label=label)
        disp = np.asarray(s.displacements)
    elif settings.sampling == "rattle":
        rng = np.random.default_rng(settings.seed)
        disp = rng.normal(scale=settings.rattle_amplitude, size=(settings.n_configurations, len(ref), 3))
        disp -= disp.mean(axis=1, keepdims=True)
    else:
        raise ValueError(f"sampling must be 'thermal' or 'rattle', not {settings.sampling!r}")
    return ref, displaced_atoms(ref, disp), disp


def displaced_atoms(ideal, displacements: np.ndarray) -> list:
    """Copies of the ASE ``ideal`` supercell displaced by each (N, 3) row of ``displacements`` (Å)."""
    atoms = []
    for u in np.asarray(displacements):
        a = ideal.copy()
        a.positions += u
        atoms.append(a)
    return atoms


def fit_anharmonic(prim_atoms, ideal, configurations, forces: np.ndarray, displacements: np.ndarray,
                   fc2: np.ndarray, settings: ValidationSettings):
    """hiPhive fit of the residual forces F + Φ₂u with the neighbour-shell cutoffs of ``settings``."""
    from tdphonon.sampling import fc_to_matrix
    from tdphonon.validation.ifc import fit_ifcs

    n = len(ideal)
    harm = -(displacements.reshape(len(displacements), -1) @ fc_to_matrix(fc2).T).reshape(len(displacements), n, 3)
    residual = np.asarray(forces) - harm
    return fit_ifcs(prim_atoms, configurations, list(residual), ideal, shells=dict(settings.shells),
                    method=settings.fit_method, cv_splits=5 if len(configurations) >= 10 else 0, seed=settings.seed,
                    fit_orders=None if settings.fit_second_order else [o for o, _ in settings.shells if o > 2])


def named_frequencies(phonon, fc: np.ndarray, qpoints: Mapping[str, Sequence[float]]) -> dict[str, list[float]]:
    """Frequencies (THz) of Φ at the named q-points."""
    from tdphonon.harmonic import frequencies_at
    from tdphonon.renormalize import phonopy_with_force_constants

    ph = phonopy_with_force_constants(phonon, fc)
    freqs = frequencies_at(ph, np.asarray(list(qpoints.values()), dtype=float))
    return {name: [float(x) for x in f] for name, f in zip(qpoints, freqs, strict=True)}


def harmonic_step(structure: Structure, potential, settings: ValidationSettings, label: str) -> dict[str, Any]:
    """Relax (optional) and finite-displacement Φ₂ (symmetrised) with the reference calculator.

    Returns a JSON-able dict: ``structure`` (as_dict), ``supercell_matrix``, ``primitive_matrix``,
    ``force_constants`` (N, N, 3, 3), ``force_calls``, ``timings``, ``calculator`` (identity).
    """
    from tdphonon.harmonic import choose_supercell_matrix, compute_force_constants, make_phonopy, relax_structure
    from tdphonon.sampling import FCProjector

    s = settings
    t0 = time.perf_counter()
    relax_report = None
    if s.relax:
        structure, relax_report = relax_structure(structure, potential, label=label)
    t_relax = time.perf_counter() - t0
    scm = np.asarray(s.supercell_matrix if s.supercell_matrix is not None
                     else choose_supercell_matrix(structure, s.min_length, s.max_atoms), dtype=int)
    if scm.shape == (3,):
        scm = np.diag(scm)
    phonon = make_phonopy(structure, scm, "auto")
    t0 = time.perf_counter()
    stats = compute_force_constants(phonon, potential, displacement=s.displacement, label=label)
    fc = FCProjector.from_phonopy(phonon).project(phonon.force_constants)
    return {"label": label, "structure": structure.as_dict(), "supercell_matrix": scm.tolist(),
            "primitive_matrix": np.asarray(phonon.primitive_matrix, dtype=float).tolist(), "force_constants": fc,
            "force_calls": int(stats.get("force_calls", 0)), "calculator": potential.identity.to_dict(),
            "relax": asdict(relax_report) if relax_report is not None else None,
            "timings": {"relax": t_relax, "harmonic": time.perf_counter() - t0}}


def harmonic_setup(structure: Structure, settings: ValidationSettings, label: str) -> dict[str, Any]:
    """Supercell and finite-displacement supercells for a reference calculator run elsewhere.

    The path for atomate2 static makers (VASP, force fields...): the displaced supercells are
    computed by other jobs and :func:`harmonic_from_forces` builds Φ₂ from their forces.
    """
    from pymatgen.io.phonopy import get_pmg_structure

    from tdphonon.harmonic import choose_supercell_matrix, make_phonopy

    s = settings
    scm = np.asarray(s.supercell_matrix if s.supercell_matrix is not None
                     else choose_supercell_matrix(structure, s.min_length, s.max_atoms), dtype=int)
    if scm.shape == (3,):
        scm = np.diag(scm)
    ph = make_phonopy(structure, scm, "auto")
    ph.generate_displacements(distance=s.displacement, is_plusminus="auto")
    dataset = {"natom": int(ph.dataset["natom"]),
               "first_atoms": [{"number": int(d["number"]), "displacement": np.asarray(d["displacement"]).tolist()}
                               for d in ph.dataset["first_atoms"]]}
    return {"label": label, "structure": structure.as_dict(), "supercell_matrix": scm.tolist(),
            "primitive_matrix": np.asarray(ph.primitive_matrix, dtype=float).tolist(), "dataset": dataset,
            "displaced_structures": [get_pmg_structure(c) for c in ph.supercells_with_displacements]}


def harmonic_from_forces(setup: Mapping[str, Any], forces: Sequence[np.ndarray],
                         calculator: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Φ₂ (symmetrised) from the forces of :func:`harmonic_setup`'s displaced supercells (same output as
    :func:`harmonic_step`)."""
    from tdphonon.harmonic import make_phonopy
    from tdphonon.sampling import FCProjector

    ph = make_phonopy(_structure(setup["structure"]), np.asarray(setup["supercell_matrix"], dtype=int),
                      np.asarray(setup["primitive_matrix"], dtype=float))
    f = np.asarray(forces, dtype=float)
    n = len(setup["dataset"]["first_atoms"])
    if f.shape != (n, len(ph.supercell), 3) or not np.all(np.isfinite(f)):
        raise TDPhononError(setup["label"], f"reference forces have shape {f.shape}, expected ({n}, "
                                            f"{len(ph.supercell)}, 3) and finite values")
    ph.dataset = setup["dataset"]
    ph.forces = f - f.mean(axis=1, keepdims=True)  # drift removed, as phonopy does for DFT forces
    ph.produce_force_constants()
    fc = FCProjector.from_phonopy(ph).project(ph.force_constants)
    return {"label": setup["label"], "structure": _structure(setup["structure"]).as_dict(),
            "supercell_matrix": setup["supercell_matrix"], "primitive_matrix": setup["primitive_matrix"],
            "force_constants": fc, "force_calls": n, "calculator": dict(calculator or {}), "relax": None,
            "timings": {}}


def _structure(s: Structure | Mapping[str, Any]) -> Structure:
    """A Structure from a Structure or its dict (jobflow deserialises MSON dicts into objects)."""
    return s if isinstance(s, Structure) else Structure.from_dict(s)


def _phonon(harmonic: Mapping[str, Any], fc: np.ndarray | None = None):
    from tdphonon.harmonic import make_phonopy

    ph = make_phonopy(_structure(harmonic["structure"]), np.asarray(harmonic["supercell_matrix"], dtype=int),
                      np.asarray(harmonic["primitive_matrix"], dtype=float))
    ph.force_constants = np.ascontiguousarray(harmonic["force_constants"] if fc is None else fc, dtype="double")
    return ph


def configurations_step(harmonic: Mapping[str, Any], settings: ValidationSettings, label: str) -> dict[str, Any]:
    """Displacements (n, N, 3) of the configurations for the anharmonic fit (seeded)."""
    ph = _phonon(harmonic)
    _, _, disp = sample_configurations(ph, np.asarray(harmonic["force_constants"]), settings, label)
    return {"displacements": disp, "sampling": settings.sampling, "seed": settings.seed}


def _configurations(phonon, displacements: np.ndarray):
    """(ideal supercell, displaced supercells) as ASE Atoms in phonopy's supercell order."""
    from tdphonon.sampling import supercell_to_ase

    ideal = supercell_to_ase(phonon.supercell)
    return ideal, displaced_atoms(ideal, displacements)


def forces_step(harmonic: Mapping[str, Any], displacements: np.ndarray, potential, label: str) -> dict[str, Any]:
    """Reference forces (n, N, 3) of the displaced configurations."""
    t0 = time.perf_counter()
    _, atoms = _configurations(_phonon(harmonic), displacements)
    forces = potential.forces(atoms, labels=[f"{label} configuration {i}" for i in range(len(atoms))])
    return {"forces": np.asarray(forces), "force_calls": len(atoms), "seconds": time.perf_counter() - t0,
            "calculator": potential.identity.to_dict()}


def anharmonic_step(harmonic: Mapping[str, Any], displacements: np.ndarray, forces: np.ndarray,
                    settings: ValidationSettings, label: str) -> ValidationResult:
    """Fit Φ₃/Φ₄, SCPH at every T (high → low, warm starts), κ_L for HA+3ph and SCPH+3ph."""
    from tdphonon.harmonic import band_structure
    from tdphonon.metrics import r_onsite
    from tdphonon.pipeline import band_named_qpoints
    from tdphonon.renormalize import phonopy_with_force_constants
    from tdphonon.sampling import FCProjector
    from tdphonon.structures import phonopy_atoms_to_ase
    from tdphonon.validation.kappa import kappa_rta, mesh_convergence
    from tdphonon.validation.scph import QuarticContraction, scph

    s = settings
    timings: dict[str, float] = {}
    phonon = _phonon(harmonic)
    fc_fd = np.asarray(harmonic["force_constants"], dtype=float)
    scm = np.asarray(harmonic["supercell_matrix"], dtype=int)
    proj = FCProjector.from_phonopy(phonon)
    ideal, configs = _configurations(phonon, displacements)
    t0 = time.perf_counter()
    fit = fit_anharmonic(phonopy_atoms_to_ase(phonon.primitive), ideal, configs, np.asarray(forces),
                         np.asarray(displacements), fc_fd, s)
    fcs = fit.force_constants(ideal)
    fc2 = fc_fd + (proj.project(fcs.get_fc_array(order=2)) if s.fit_second_order else 0.0)
    fc3 = fcs.get_fc_array(order=3)
    quartic = QuarticContraction.from_hiphive(fcs)
    timings["fit"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    res = ValidationResult(label=label, structure=_structure(harmonic["structure"]), supercell_matrix=scm,
                           fc2=fc2, fit=fit.to_dict(), settings=s.to_dict(),
                           calculator=dict(harmonic.get("calculator") or {}),
                           force_calls=int(harmonic.get("force_calls", 0)) + len(configs))
    qnamed = band_named_qpoints(band_structure(phonopy_with_force_constants(phonon, fc2), npoints=3))
    res.named_qpoints = qnamed
    res.named_frequencies["harmonic"] = named_frequencies(phonon, fc2, qnamed)
    warm = None
    for t in sorted(s.temperatures, reverse=True):
        r = scph(phonon.supercell, phonon.primitive, fc2, quartic, t, mixing=s.scph_mixing, tol_thz=s.scph_tol_thz,
                 max_iterations=s.scph_max_iterations, projector=proj, initial=warm,
                 q_mesh=s.scph_q_mesh, phonon=phonon)
        warm = r.force_constants
        res.fc2_temperature[float(t)] = r.force_constants
        res.scph[float(t)] = r.to_dict()
        res.named_frequencies[f"{t:g}K"] = named_frequencies(phonon, r.force_constants, qnamed)
        res.r_onsite[float(t)] = float(np.max(r_onsite(r.force_constants, fc2)))
    timings["scph"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    unit, pm = phonon.unitcell, phonon.primitive_matrix
    temps = sorted(s.temperatures)
    ha = kappa_rta(unit, scm, pm, fc2, fc3, s.kappa_mesh, temps)
    res.kappa_ha = ha.to_dict()
    res.gamma["ha"] = {"frequencies_thz": ha.frequencies_thz, "gamma_thz": ha.gamma_thz, "weights": ha.weights}
    k_sc, g_sc = [], []
    for t in temps:
        kt = kappa_rta(unit, scm, pm, res.fc2_temperature[float(t)], fc3, s.kappa_mesh, [t])
        k_sc.append(kt.kappa[0].tolist())
        g_sc.append({"frequencies_thz": kt.frequencies_thz, "gamma_thz": kt.gamma_thz[0]})
    res.kappa_scph = {"temperatures": temps, "mesh": list(ha.mesh), "kappa_wmk": k_sc,
                      "kappa_average_wmk": [float(np.mean(k[:3])) for k in k_sc]}
    res.gamma["scph"] = dict(zip([f"{t:g}" for t in temps], g_sc, strict=True))
    if s.kappa_convergence_meshes and len(s.kappa_convergence_meshes) > 1:
        res.kappa_convergence = mesh_convergence(unit, scm, pm, fc2, fc3, s.kappa_convergence_meshes,
                                                 temps[len(temps) // 2])
    timings["kappa"] = time.perf_counter() - t0
    res.timings = {**dict(harmonic.get("timings") or {}), **timings}
    if not all(np.isfinite(res.kappa_ha["kappa_average_wmk"])):
        raise TDPhononError(label, "κ_L is not finite (imaginary harmonic modes?)")
    return res


def run_validation(structure: Structure, potential, settings: ValidationSettings | None = None,
                   label: str | None = None) -> ValidationResult:
    """The whole chain for one material with the reference ``potential`` (see the module docstring)."""
    s = settings or ValidationSettings()
    label = label or structure.composition.reduced_formula
    harm = harmonic_step(structure, potential, s, label)
    conf = configurations_step(harm, s, label)
    frc = forces_step(harm, conf["displacements"], potential, label)
    res = anharmonic_step(harm, conf["displacements"], frc["forces"], s, label)
    res.timings["configurations"] = frc["seconds"]
    return res
