"""Force–displacement fine-tuning data sets from harmonic DFT force constants.

For every compound (a :class:`~tdphonon.finetune.sources.HarmonicEntry`), configurations of its
DFT supercell are generated and labelled with the *exact* harmonic forces of Φ_DFT:

* ``random`` (default, as Lee & Xia 2024): ``n_random`` (10) configurations in which every atom is
  displaced along a uniformly random direction by an amplitude drawn uniformly from
  [0.01, 0.05] Å;
* ``modes`` (optional): ``n_modes`` *mode-weighted* configurations: u ~ N(0, Φ⁺), the shape of
  the classical covariance (each normal mode s gets an amplitude ∝ 1/|ω_s|, soft and imaginary
  modes bounded below by ``modes_floor_thz``), rescaled so that the largest atomic displacement is
  drawn uniformly from [``amplitude_min``, ``amplitude_max``] (:func:`mode_weighted_displacements`).
  At equal amplitude a random Cartesian displacement gives a mode s a force ∝ ω_s², so a force loss weights a frequency
  error δω_s by ∝ ω_s and barely sees the soft modes; with amplitudes ∝ 1/ω_s every mode's
  frequency error costs the same force error. No atom moves further than in the random
  configurations, where F = −Φu is right;
* ``thermal`` (optional): ``n_thermal`` configurations per temperature drawn from the quantum
  (or classical) covariance Σ(T) of Φ (:func:`tdphonon.sampling.thermal_covariance`);
* ``raw`` (optional): the DFT displacement–force data of the source, as computed (by default
  only random-displacement sets; finite-displacement, phono3py pair and MD sets on request);
* ``replay`` (optional, training split only): structures *without* DFT data, labelled by the base
  model itself (:func:`replay_configurations`). Rehearsal against forgetting: their loss is zero at
  the start of fine-tuning and grows only where training moves the model away from the base on
  chemistry the DFT sets do not cover. ``"elements"`` takes the elemental crystals (ASE reference
  states) of every element of the training and validation compounds; files add any structures ASE
  reads. A replay structure whose reduced formula is that of a DFT compound (any split, held-out
  ones included) is skipped: the DFT data decide there, and held-out compounds stay unseen.

Forces are F = −Φu with the full (N, N, 3, 3) Φ (F_ia = −Σ_jb Φ_ia,jb u_jb); energies
E = E₀ + ½ uᵀΦu are written only when E₀ (the energy of the undisplaced supercell) is known —
otherwise the configuration is forces-only (``info["energy_available"] = False``). Raw DFT
configurations keep their DFT energies when the source has them.

The split is **by compound** (reduced formula + space group, so that e.g. the NaCl FD and RD sets
of one database land in the same split): the compounds listed in ``held_out`` (labels or compound
ids) go to ``test``, and a seeded ``val_fraction`` (5 %) of the others to ``val``. A compound's
configurations depend only on ``seed`` and its label, not on the other entries.

Files: ``train.extxyz``, ``val.extxyz`` (and ``test.extxyz`` with a held-out list), ASE extended
XYZ with the forces in a ``SinglePointCalculator`` (the ``forces`` column) and ``info`` keys
``label``, ``compound``, ``source``, ``kind``, ``split``, ``index``, ``energy_available`` (and
``temperature`` for thermal configurations); ``manifest.json`` records the settings, seeds, the
sources with the sha256 of every source file, counts per compound / kind / split, the sha256 of
every written file, skipped entries with reasons and package versions.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator

from tdphonon.errors import TDPhononError, UnphysicalForcesError
from tdphonon.finetune.sources import DataError, HarmonicEntry, SkippedEntry, estimate_energy0
from tdphonon.sampling import (
    ModeAmplitudePolicy,
    derive_seed,
    full_force_constants,
    normal_modes,
    sample_displacements,
    supercell_to_ase,
    thermal_covariance,
)

__all__ = [
    "MANIFEST_FORMAT",
    "SPLITS",
    "DatasetSettings",
    "FinetuneDataset",
    "build_dataset",
    "compound_configurations",
    "harmonic_energies",
    "harmonic_forces",
    "load_dataset",
    "mode_weighted_displacements",
    "needs_base_model",
    "random_displacements",
    "replay_configurations",
    "replay_structures",
    "split_by_compound",
    "thermal_displacements",
    "write_dataset",
]

MANIFEST_FORMAT = "tdphonon.finetune.dataset/1"
SPLITS = ("train", "val", "test")
#: A compound is *unstable* (``DatasetSettings.n_modes_unstable``) when a non-translational mode of its
#: DFT Φ on the commensurate q-points lies below −UNSTABLE_THZ (THz). The unstable shared sets go down to
#: −0.66 (Amm2) … −6.0 THz (CaTiO3); every other set stays above +0.3 THz
UNSTABLE_THZ = 0.5
#: labels of the thermal configurations (:attr:`DatasetSettings.thermal_labels`)
THERMAL_LABELS = ("harmonic", "base_anharmonic")
#: :attr:`DatasetSettings.replay` keyword: the elemental crystals of the data's elements
REPLAY_ELEMENTS = "elements"


# --------------------------------------------------------------------------------------------
# settings
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DatasetSettings:
    """How configurations are generated and split (recorded in the manifest).

    Attributes
    ----------
    n_random
        Random-displacement configurations per compound (10, as Lee & Xia 2024; 0 for none).
    amplitude_min, amplitude_max
        Range (Å) of the uniform per-atom displacement amplitude (``random``) and of the largest
        atomic displacement of a configuration (``modes``).
    n_modes
        Mode-weighted configurations per compound (:func:`mode_weighted_displacements`; 0: none).
    modes_floor_thz
        Lowest |ν| (THz) a mode-weighted amplitude 1/|ν| uses (near-zero and weakly imaginary modes).
    n_modes_unstable
        *Extra* mode-weighted configurations for a compound whose DFT harmonic spectrum is unstable
        (a mode below −:data:`UNSTABLE_THZ`): among many compounds, ``n_modes`` per compound gives
        the few soft-mode materials too little weight to learn their instabilities (docs/finetune.md).
    temperatures
        Temperatures (K) of thermal configurations (empty: none).
    n_thermal
        Thermal configurations per compound and temperature.
    quantum
        Bose–Einstein (True) or classical mode amplitudes for the thermal configurations.
    policy
        Treatment of imaginary / near-zero modes in Σ(T) (:class:`~tdphonon.sampling.ModeAmplitudePolicy`).
    thermal_labels
        Forces of the thermal configurations: ``"harmonic"`` (default, F = −Φu: at thermal amplitudes
        this teaches a purely harmonic surface) or ``"base_anharmonic"`` (F = −Φu plus the base
        model's own anharmonic remainder at u, :func:`anharmonic_remainder`: the target is the DFT
        curvature with the base model's higher-order terms; needs ``base_potential`` in
        :func:`build_dataset`; forces only, no energies).
    remainder_delta
        Largest atomic displacement (Å) of the ±δ·u/max|u| central difference that gives the base
        model's linear (harmonic) response along u in ``"base_anharmonic"`` labels.
    thermal_cap_mode
        ``"clip"`` (default: displacements beyond half the shortest bond are shortened, counted in
        the manifest) or ``"raise"`` (the compound's thermal configurations are then skipped with
        the reason recorded).
    include_raw
        Also write the DFT displacement–force data of the sources, as they are.
    raw_kinds
        Which raw sets (:attr:`ForceSet.kind`): ``"random"`` by default; add ``"fd"``, ``"fd-pairs"``,
        ``"md+random"`` explicitly.
    max_raw_per_set
        At most this many configurations of each raw set (the first ones); ``None``: all.
    val_fraction
        Fraction of the (non-held-out) compounds in the validation split.
    held_out
        Labels or compound ids whose compounds form the ``test`` split.
    seed
        Base seed (per-compound seeds are derived from it and the entry label).
    estimate_energy0
        When an entry has no E₀ but raw DFT energies, estimate E₀ (:func:`estimate_energy0`) so that
        harmonic configurations get energies too (recorded per compound).
    replay
        Structures without DFT data whose base-model forces join the training split
        (:func:`replay_structures`): ``"elements"`` (the elemental crystals of the training and
        validation compounds' elements) and/or paths of structure files (any format ASE reads, all
        frames). Empty (default): none. Needs ``base_potential`` in :func:`build_dataset`.
    n_replay
        Random-displacement configurations (``amplitude_min``–``amplitude_max``) per replay structure.
    replay_min_atoms
        A replay structure is repeated n×n×n with the smallest n that gives at least this many atoms.
    """

    n_random: int = 10
    amplitude_min: float = 0.01
    amplitude_max: float = 0.05
    n_modes: int = 0
    modes_floor_thz: float = 1.0
    n_modes_unstable: int = 0
    temperatures: tuple[float, ...] = ()
    n_thermal: int = 10
    quantum: bool = True
    policy: ModeAmplitudePolicy = field(default_factory=ModeAmplitudePolicy)
    thermal_labels: str = "harmonic"
    remainder_delta: float = 0.005
    thermal_cap_mode: str = "clip"
    include_raw: bool = False
    raw_kinds: tuple[str, ...] = ("random",)
    max_raw_per_set: int | None = None
    val_fraction: float = 0.05
    held_out: tuple[str, ...] = ()
    seed: int = 0
    estimate_energy0: bool = False
    replay: tuple[str, ...] = ()
    n_replay: int = 10
    replay_min_atoms: int = 32

    def __post_init__(self) -> None:
        if min(self.n_random, self.n_thermal, self.n_modes, self.n_modes_unstable) < 0:
            raise ValueError("n_random, n_modes, n_modes_unstable and n_thermal must be ≥ 0")
        if self.modes_floor_thz <= 0:
            raise ValueError("modes_floor_thz must be positive")
        if not 0 <= self.amplitude_min <= self.amplitude_max:
            raise ValueError("need 0 ≤ amplitude_min ≤ amplitude_max")
        if not 0 <= self.val_fraction < 1:
            raise ValueError("val_fraction must be in [0, 1)")
        if any(t < 0 for t in self.temperatures):
            raise ValueError("temperatures must be ≥ 0 K")
        if self.thermal_labels not in THERMAL_LABELS:
            raise ValueError(f"thermal_labels must be one of {THERMAL_LABELS}, got {self.thermal_labels!r}")
        if not self.remainder_delta > 0:
            raise ValueError("remainder_delta must be positive (Å)")
        if self.thermal_cap_mode not in ("clip", "raise"):
            raise ValueError("thermal_cap_mode must be 'clip' or 'raise'")
        object.__setattr__(self, "temperatures", tuple(float(t) for t in self.temperatures))
        if self.n_replay < 0 or self.replay_min_atoms < 1:
            raise ValueError("n_replay must be ≥ 0 and replay_min_atoms ≥ 1")
        object.__setattr__(self, "raw_kinds", tuple(self.raw_kinds))
        object.__setattr__(self, "held_out", tuple(self.held_out))
        object.__setattr__(self, "replay", tuple(str(r) for r in self.replay))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["policy"] = self.policy.to_dict()
        d["temperatures"] = list(self.temperatures)
        d["raw_kinds"] = list(self.raw_kinds)
        d["held_out"] = list(self.held_out)
        d["replay"] = list(self.replay)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DatasetSettings:
        d = dict(d)
        if isinstance(d.get("policy"), dict):
            d["policy"] = ModeAmplitudePolicy.from_dict(d["policy"])
        for k in ("temperatures", "raw_kinds", "held_out", "replay"):
            if k in d:
                d[k] = tuple(d[k])
        return cls(**d)


# --------------------------------------------------------------------------------------------
# physics
# --------------------------------------------------------------------------------------------
def harmonic_forces(force_constants: np.ndarray, displacements: np.ndarray) -> np.ndarray:
    """F = −Φu: F_ia = −Σ_jb Φ_ij,ab u_jb for full Φ (N, N, 3, 3) (eV/Å²) and u (..., N, 3) (Å) → eV/Å."""
    fc = np.asarray(force_constants, dtype=float)
    u = np.asarray(displacements, dtype=float)
    n = fc.shape[0]
    if fc.shape != (n, n, 3, 3) or u.shape[-2:] != (n, 3):
        raise ValueError(f"force constants {fc.shape} and displacements {u.shape} do not match")
    return -np.einsum("ijab,...jb->...ia", fc, u, optimize=True)


def harmonic_energies(force_constants: np.ndarray, displacements: np.ndarray, energy0: float = 0.0) -> np.ndarray:
    """E = E₀ + ½ uᵀΦu (eV) of displacements (..., N, 3)."""
    u = np.asarray(displacements, dtype=float)
    f = harmonic_forces(force_constants, u)
    return float(energy0) - 0.5 * np.einsum("...ia,...ia->...", f, u)


def random_displacements(natom: int, n_configurations: int, amplitude_range: tuple[float, float] = (0.01, 0.05),
                         seed: int | np.random.Generator = 0) -> np.ndarray:
    """(n, N, 3) displacements: a uniformly random direction per atom, amplitude uniform in the range (Å)."""
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(int(seed))
    lo, hi = (float(x) for x in amplitude_range)
    d = rng.standard_normal((int(n_configurations), int(natom), 3))
    norm = np.linalg.norm(d, axis=-1, keepdims=True)
    d /= np.where(norm > 0, norm, 1.0)
    amp = rng.uniform(lo, hi, size=(int(n_configurations), int(natom), 1))
    return d * amp


def mode_weighted_displacements(phonon, n_configurations: int,
                                amplitude_range: tuple[float, float] = (0.01, 0.05), *,
                                force_constants: np.ndarray | None = None, floor_thz: float = 1.0,
                                seed: int | np.random.Generator = 0) -> tuple[np.ndarray, dict[str, Any]]:
    """(n, N, 3) small displacements whose normal-mode amplitudes scale as 1/|ω_s|, and their record.

    Each configuration is u = Σ_s M^{-1/2} w_s ξ_s / max(|ν_s|, ν_floor) with ξ_s ~ N(0, 1) over
    the supercell normal modes of Φ (commensurate q-points; the three translations get zero
    amplitude; imaginary modes count with |ν|, the floor ``floor_thz`` bounds the near-zero ones),
    i.e. the shape of the classical covariance k_BT Φ⁺, rescaled so that its *largest* atomic
    displacement is drawn uniformly from ``amplitude_range`` (Å): no atom moves further than in
    the random configurations, where F = −Φu holds (a soft-mode double well is still close to
    its inverted parabola there; at thermal amplitudes it is not).

    Why: the force of mode s at amplitude u_s is ∝ ω_s² u_s, so a force loss weights an error δω_s
    by ∝ ω_s u_s. Random Cartesian displacements (u_s independent of ω_s) make the soft modes —
    where phonon instabilities and anharmonicity live — nearly invisible; u_s ∝ 1/ω_s weights every
    mode's frequency error alike.
    """
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(int(seed))
    lo, hi = (float(x) for x in amplitude_range)
    if not (0 <= lo <= hi and hi > 0):
        raise ValueError(f"amplitude range must satisfy 0 ≤ min ≤ max, max > 0, got {amplitude_range}")
    if not floor_thz > 0:
        raise ValueError(f"floor_thz must be positive, got {floor_thz}")
    fc = full_force_constants(phonon) if force_constants is None else np.asarray(force_constants, dtype=float)
    modes = normal_modes(phonon.supercell, fc, phonon.primitive, method="commensurate")
    nu = np.abs(modes.frequencies)
    sigma = np.where(modes.is_translation, 0.0, 1.0 / np.maximum(nu, floor_thz))
    patterns = modes.displacement_patterns() * sigma[None, :]
    natom, n = modes.natom, int(n_configurations)
    u = (rng.standard_normal((n, 3 * natom)) @ patterns.T).reshape(n, natom, 3)
    largest = np.max(np.linalg.norm(u, axis=-1), axis=-1)
    target = rng.uniform(lo, hi, size=n)
    u *= (target / np.where(largest > 0, largest, 1.0))[:, None, None]
    var = np.sum(modes.displacement_patterns() ** 2, axis=0) * sigma**2  # mean-square displacement per mode
    soft = ~modes.is_translation & (nu < 3.0)
    return u, {"max_displacement": target.tolist(),
               "rms_displacement": np.sqrt(np.mean(np.sum(u**2, axis=-1), axis=-1)).tolist(),
               "floor_thz": float(floor_thz),
               "soft_mode_share": float(var[soft].sum() / var.sum()) if var.sum() > 0 else 0.0,
               "n_imaginary": int(np.sum(~modes.is_translation & (modes.frequencies < -1e-3))),
               "min_frequency_thz": float(np.min(modes.frequencies[~modes.is_translation], initial=np.inf)),
               "n_below_floor": int(np.sum(~modes.is_translation & (nu < floor_thz)))}


def thermal_displacements(phonon, temperature: float, n_configurations: int, *,
                          force_constants: np.ndarray | None = None, quantum: bool = True,
                          policy: ModeAmplitudePolicy | None = None, seed: int = 0, cap_mode: str = "clip",
                          label: str | None = None) -> tuple[np.ndarray, dict[str, Any]]:
    """(n, N, 3) displacements u ~ N(0, Σ(T)) of Φ and the sampling record.

    Σ(T) is built from the supercell normal modes of Φ (commensurate q-points, translations
    removed exactly; :func:`tdphonon.sampling.normal_modes`, :func:`~tdphonon.sampling.thermal_covariance`)
    and sampled with :func:`tdphonon.sampling.sample_displacements`.
    """
    fc = full_force_constants(phonon) if force_constants is None else np.asarray(force_constants, dtype=float)
    modes = normal_modes(phonon.supercell, fc, phonon.primitive, method="commensurate")
    cov = thermal_covariance(modes, float(temperature), quantum, policy)
    res = sample_displacements(cov, supercell_to_ase(phonon.supercell), int(n_configurations), seed=int(seed),
                               cap_mode=cap_mode, label=label)  # type: ignore[arg-type]
    return res.displacements, res.to_dict()


def anharmonic_remainder(potential, reference: Atoms, displacements: np.ndarray, delta: float = 0.005,
                         label: str | None = None) -> np.ndarray:
    """The base model's forces at u minus their constant and linear parts: (n, N, 3) in eV/Å.

    R(u) = F(u) − F(0) − [F(εu) − F(−εu)] / (2ε), with ε = ``delta`` / max_i |u_i|. The bracket is
    the model's harmonic force −Φ_model·u by central difference along u (error O(ε²) from the
    quartic terms), so R keeps the model's cubic and higher-order forces and nothing of its Φ or of
    any residual force at the reference. −Φ_DFT·u + R(u) is then the force of the DFT harmonic
    surface plus the model's anharmonicity; 4 force calls per configuration (F(0) once).

    Parameters
    ----------
    potential
        A :class:`~tdphonon.potentials.Potential` (the base model of the fine-tune).
    reference
        The reference supercell (ASE ``Atoms``; the DFT equilibrium positions).
    displacements
        (n, N, 3) displacements (Å).
    delta
        Largest atomic displacement of the ±εu difference (Å).
    label
        Material name for errors (extrapolating forces raise :class:`UnphysicalForcesError`).
    """
    rem, failed = _remainder_and_failures(potential, reference, displacements, delta, label)
    if failed:
        k, why = next(iter(failed.items()))
        raise UnphysicalForcesError(label, f"configuration {k}: {why}")
    return rem


def _remainder_and_failures(potential, reference: Atoms, displacements: np.ndarray, delta: float,
                            label: str | None) -> tuple[np.ndarray, dict[int, str]]:
    """:func:`anharmonic_remainder` from one batched evaluation, and {configuration: why} where the model's
    forces at u or ±εu are not usable (NaN or over the model's limit; those rows of R are meaningless).
    Unusable forces at the reference itself raise :class:`UnphysicalForcesError`."""
    u = np.asarray(displacements, dtype=float)
    if u.ndim != 3 or u.shape[1:] != (len(reference), 3):
        raise ValueError(f"displacements must have shape (n, {len(reference)}, 3), got {u.shape}")
    scale = np.linalg.norm(u, axis=2).max(axis=1)
    if np.any(scale <= 0):
        raise ValueError("a zero displacement has no direction for the linear part")
    from tdphonon.potentials import validate_forces
    from tdphonon.validation.pipeline import displaced_atoms

    eps = (float(delta) / scale)[:, None, None]
    n = len(u)
    labels = None if label is None else [label] * (3 * n + 1)
    energies, forces = potential.energies_and_forces(
        displaced_atoms(reference, np.concatenate([u[:1] * 0, u, eps * u, -eps * u])), labels, validate=False)

    def why(i: int) -> str | None:
        try:
            validate_forces(forces[i], energies[i], label or "structure", potential.max_force)
        except UnphysicalForcesError as exc:
            return exc.reason
        return None

    if (at_ref := why(0)) is not None:
        raise UnphysicalForcesError(label, f"at the reference structure: {at_ref}")
    failed: dict[int, str] = {}
    for k in range(n):  # the configuration itself, then its +εu and −εu probes
        reasons = [w for w in (why(1 + k), why(1 + n + k), why(1 + 2 * n + k)) if w is not None]
        if reasons:
            failed[k] = reasons[0]
    f = np.stack(forces)
    f0, fu, fp, fm = f[0], f[1:n + 1], f[n + 1:2 * n + 1], f[2 * n + 1:]
    return fu - f0[None] - (fp - fm) / (2 * eps), failed


def _remainders_where_sane(potential, reference: Atoms, u: np.ndarray, delta: float, label: str, temperature: float,
                           record: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """:func:`anharmonic_remainder` of the thermal configurations whose base-model forces are sane.

    A configuration where the base model extrapolates (NaN or over-limit forces: its label would be
    garbage) is dropped with a warning in ``record``, configuration by configuration, rather than the
    whole set (whose harmonic data are still good). Returns (remainders, indices kept).
    """
    rem, failed = _remainder_and_failures(potential, reference, u, delta, label)
    kept = np.array([k for k in range(len(u)) if k not in failed], dtype=int)
    if failed:
        record["warnings"].append(
            f"thermal {temperature:g} K: {len(failed)} of {len(u)} configurations dropped, the base model's forces "
            f"are not usable as labels there ({'; '.join(f'#{k}: {w}' for k, w in failed.items())})")
        record.setdefault("thermal_dropped", {})[f"{temperature:g}K"] = len(failed)
    return rem[kept], kept


def _label_key(label: str) -> int:
    return zlib.crc32(label.encode())


def _make_atoms(reference: Atoms, u: np.ndarray, forces: np.ndarray, energy: float | None,
                info: dict[str, Any]) -> Atoms:
    a = Atoms(symbols=reference.get_chemical_symbols(), cell=reference.cell.array, pbc=True,
              positions=reference.positions + u)
    a.calc = SinglePointCalculator(a, forces=np.array(forces, dtype=float),
                                   **({"energy": float(energy)} if energy is not None else {}))
    a.info.update(info)
    a.info["energy_available"] = energy is not None
    return a


def compound_configurations(entry: HarmonicEntry, settings: DatasetSettings | None = None,
                            base_potential=None) -> tuple[list[Atoms], dict[str, Any]]:
    """Configurations (ASE ``Atoms`` with forces / energies) of one entry and their record.

    ``base_potential`` (a :class:`~tdphonon.potentials.Potential`) is needed only for
    ``settings.thermal_labels == "base_anharmonic"``.

    Seeds: random configurations use ``derive_seed(seed, crc32(label), 1)``, thermal ones
    ``derive_seed(seed, crc32(label), 2, round(1000 T))``, mode-weighted ones
    ``derive_seed(seed, crc32(label), 3)`` (the extra ones of an unstable compound
    ``derive_seed(seed, crc32(label), 4)``), so an entry's data do not depend on the
    other entries of the data set.
    """
    s = settings or DatasetSettings()
    fc = entry.force_constants
    ref = entry.reference_atoms()
    natom = len(ref)
    key = _label_key(entry.label)
    compound = entry.compound
    base_info = {"label": entry.label, "compound": compound, "source": entry.source}
    if entry.functional:
        base_info["functional"] = entry.functional
    e0, e0_origin = entry.energy0, "file" if entry.energy0 is not None else None
    if e0 is None and s.estimate_energy0:
        est = estimate_energy0(entry)
        if est is not None:
            e0 = est[0]
            e0_origin = f"estimated from {est[2]} raw DFT energies (rms {est[1] * 1e3:.2f} meV per supercell)"
    out: list[Atoms] = []
    record: dict[str, Any] = {"label": entry.label, "compound": compound, "n_atoms": natom, "energy0": e0,
                              "energy0_origin": e0_origin, "seeds": {}, "counts": {}, "warnings": []}
    if s.n_random:
        seed = derive_seed(s.seed, key, 1)
        record["seeds"]["random"] = seed
        u = random_displacements(natom, s.n_random, (s.amplitude_min, s.amplitude_max), seed)
        f = harmonic_forces(fc, u)
        e = harmonic_energies(fc, u, e0) if e0 is not None else [None] * len(u)
        for k in range(len(u)):
            out.append(_make_atoms(ref, u[k], f[k], e[k], {**base_info, "kind": "random", "index": k}))
        record["counts"]["random"] = len(u)
    if s.n_modes:
        seed = derive_seed(s.seed, key, 3)
        record["seeds"]["modes"] = seed
        try:
            u, rec = mode_weighted_displacements(entry.phonon, s.n_modes, (s.amplitude_min, s.amplitude_max),
                                                 force_constants=fc, floor_thz=s.modes_floor_thz,
                                                 seed=seed)
        except TDPhononError as exc:
            record["warnings"].append(f"mode-weighted configurations skipped: {exc.reason}")
        else:
            unstable = rec["min_frequency_thz"] < -UNSTABLE_THZ
            if unstable and s.n_modes_unstable:
                seed = derive_seed(s.seed, key, 4)
                record["seeds"]["modes_unstable"] = seed
                extra, _ = mode_weighted_displacements(entry.phonon, s.n_modes_unstable,
                                                       (s.amplitude_min, s.amplitude_max), force_constants=fc,
                                                       floor_thz=s.modes_floor_thz, seed=seed)
                u = np.concatenate([u, extra])
            f = harmonic_forces(fc, u)
            e = harmonic_energies(fc, u, e0) if e0 is not None else [None] * len(u)
            for k in range(len(u)):
                out.append(_make_atoms(ref, u[k], f[k], e[k], {**base_info, "kind": "modes", "index": k}))
            record["counts"]["modes"] = len(u)
            record["modes"] = {"max_displacement": float(max(rec["max_displacement"])),
                               "mean_rms_displacement": float(np.mean(rec["rms_displacement"])),
                               "unstable": bool(unstable),
                               **{k: rec[k] for k in ("soft_mode_share", "n_imaginary", "n_below_floor",
                                                      "min_frequency_thz")}}
    for t in s.temperatures if s.n_thermal else ():
        seed = derive_seed(s.seed, key, 2, round(1000 * t))
        record["seeds"][f"thermal_{t:g}K"] = seed
        try:
            u, rec = thermal_displacements(entry.phonon, t, s.n_thermal, force_constants=fc, quantum=s.quantum,
                                           policy=s.policy, seed=seed, cap_mode=s.thermal_cap_mode, label=entry.label)
        except TDPhononError as exc:
            record["warnings"].append(f"thermal {t:g} K skipped: {exc.reason}")
            continue
        f = harmonic_forces(fc, u)
        e = harmonic_energies(fc, u, e0) if e0 is not None else [None] * len(u)
        kind = "thermal"
        if s.thermal_labels == "base_anharmonic":
            if base_potential is None:
                raise ValueError("thermal_labels='base_anharmonic' needs the base model (base_potential)")
            rem, kept = _remainders_where_sane(base_potential, ref, u, s.remainder_delta, entry.label, t, record)
            if not kept.size:
                continue
            u, f, e = u[kept], f[kept], [e[i] for i in kept]
            record.setdefault("anharmonic_remainder", {})[f"{t:g}K"] = {
                "rms_ev_a": float(np.sqrt(np.mean(rem ** 2))),
                "ratio_to_harmonic": float(np.linalg.norm(rem) / max(np.linalg.norm(f), 1e-30))}
            f, e, kind = f + rem, [None] * len(u), "thermal+base_anharmonic"
        for k in range(len(u)):
            out.append(_make_atoms(ref, u[k], f[k], e[k],
                                   {**base_info, "kind": kind, "index": k, "temperature": t}))
        record["counts"][f"thermal_{t:g}K"] = len(u)
        record.setdefault("thermal", {})[f"{t:g}K"] = {
            "n_clipped_atoms": rec["n_clipped_atoms"], "max_displacement": rec["max_displacement_found"],
            "rms_displacement": rec["covariance"]["rms_displacement"],
            "n_imaginary": rec["covariance"]["report"]["n_imaginary"],
            "n_soft": rec["covariance"]["report"]["n_soft"]}
    if s.include_raw:
        for iset, fs in enumerate(entry.raw_displacement_sets):
            if fs.kind not in s.raw_kinds:
                continue
            n = fs.n_configurations if s.max_raw_per_set is None else min(fs.n_configurations, s.max_raw_per_set)
            for k in range(n):
                e = None if fs.energies is None else float(fs.energies[k])
                out.append(_make_atoms(fs.reference, fs.displacements[k], fs.forces[k], e,
                                       {**base_info, "source": fs.source or entry.source, "kind": f"raw:{fs.kind}",
                                        "index": k, "raw_set": iset}))
            record["counts"][f"raw:{fs.kind}"] = record["counts"].get(f"raw:{fs.kind}", 0) + n
    return out, record


# --------------------------------------------------------------------------------------------
# replay (base-model labels for chemistry without DFT data)
# --------------------------------------------------------------------------------------------
def reduced_formula(atoms: Atoms) -> str:
    """pymatgen's reduced formula of ``atoms`` (the formula part of a compound id, e.g. ``"Si"``)."""
    from pymatgen.core import Composition

    return Composition(atoms.get_chemical_formula()).reduced_formula


def replay_structures(specs: Sequence[str], elements: Iterable[str]
                      ) -> tuple[list[tuple[str, Atoms, str]], list[dict[str, str]]]:
    """The replay structures of :attr:`DatasetSettings.replay` as ``(label, atoms, source)``, and the skipped ones.

    Parameters
    ----------
    specs
        ``"elements"``: for every element in ``elements``, its ASE reference-state crystal
        (``ase.build.bulk(symbol)``: experimental lattice constant, primitive cell); an element whose
        reference state is not a crystal ASE builds (O₂, Cl₂, …) is skipped with the reason. Any other
        entry is a structure file, read with ``ase.io.read(path, index=":")``.
    elements
        Chemical symbols for ``"elements"``.

    Raises
    ------
    DataError
        If a structure file is missing or unreadable.
    """
    import ase.io
    from ase.build import bulk
    from ase.data import atomic_numbers, reference_states

    out: list[tuple[str, Atoms, str]] = []
    skipped: list[dict[str, str]] = []
    for spec in specs:
        if spec == REPLAY_ELEMENTS:
            for el in sorted(set(elements)):
                state = reference_states[atomic_numbers[el]] or {}
                label = f"replay:{el}-{state.get('symmetry', 'none')}"
                try:
                    atoms = bulk(el)
                except Exception as exc:  # ASE raises ValueError/KeyError/RuntimeError for non-crystal states
                    skipped.append({"label": label, "path": "ase.build.bulk",
                                    "reason": f"no crystal ASE builds for the reference state "
                                              f"{state.get('symmetry')!r} ({exc})"})
                    continue
                out.append((label, atoms, f"ase.build.bulk('{el}') reference state"))
            continue
        path = Path(spec)
        if not path.is_file():
            raise DataError(None, f"replay structure file {path}: missing")
        try:
            frames = ase.io.read(path, index=":")
        except Exception as exc:
            raise DataError(None, f"replay structure file {path}: unreadable ({exc})") from exc
        for i, atoms in enumerate(frames):
            out.append((f"replay:{path.name}#{i}", atoms, str(path)))
    return out, skipped


def replay_configurations(label: str, atoms: Atoms, base_potential, settings: DatasetSettings | None = None,
                          source: str = "") -> tuple[list[Atoms], dict[str, Any]]:
    """Base-model-labelled random-displacement configurations of one replay structure, and their record.

    The structure is repeated n×n×n (smallest n with at least ``settings.replay_min_atoms`` atoms);
    ``settings.n_replay`` configurations get the random displacements of :func:`random_displacements`
    (seed ``derive_seed(seed, crc32(label), 5)``) and the base model's forces as labels (kind
    ``"replay:base"``, forces only: the base model's energy scale is not the DFT one; the energy is
    kept in ``info["base_energy"]``).

    Raises
    ------
    TDPhononError
        Where the structure is not a 3D crystal or the base model cannot label it (unsupported
        elements, unphysical forces); :func:`build_dataset` skips it with the reason.
    """
    from tdphonon.validation.pipeline import displaced_atoms

    s = settings or DatasetSettings()
    if not atoms.pbc.all() or abs(atoms.cell.volume) < 1e-6:
        raise TDPhononError(label, "a replay structure must be a periodic crystal (3D cell)")
    n = int(np.ceil((s.replay_min_atoms / len(atoms)) ** (1 / 3) - 1e-9))
    ref = atoms.repeat((n, n, n))
    ref.calc = None
    key = _label_key(label)
    seed = derive_seed(s.seed, key, 5)
    u = random_displacements(len(ref), s.n_replay, (s.amplitude_min, s.amplitude_max), seed)
    energies, forces = base_potential.energies_and_forces(displaced_atoms(ref, u), [label] * len(u))
    formula = reduced_formula(ref)
    info = {"label": label, "compound": formula, "source": source, "kind": "replay:base"}
    out = []
    for k in range(len(u)):
        a = _make_atoms(ref, u[k], forces[k], None, {**info, "index": k})
        a.info["base_energy"] = float(energies[k])
        out.append(a)
    record = {"label": label, "formula": formula, "source": source, "n_atoms": len(ref), "repeat": n,
              "seed": seed, "n_configurations": len(out),
              "rms_force_ev_a": float(np.sqrt(np.mean(np.square(forces)))) if out else 0.0}
    return out, record


# --------------------------------------------------------------------------------------------
# split
# --------------------------------------------------------------------------------------------
def split_by_compound(compounds: Iterable[str], val_fraction: float = 0.05, held_out: Iterable[str] = (),
                      seed: int = 0) -> dict[str, str]:
    """Assign every compound to ``train`` / ``val`` / ``test``.

    ``held_out`` compounds go to ``test``. Of the others, ``round(val_fraction × n)`` (at least one
    when ``val_fraction > 0`` and at least two compounds remain, never all) go to ``val``: those
    with the smallest ``sha256(f"{seed}:{compound}")``, so that the assignment is seeded, does not
    depend on the input order and changes little when compounds are added.
    """
    comps = sorted(set(compounds))
    held = set(held_out)
    out = {c: "test" for c in comps if c in held}
    rest = [c for c in comps if c not in held]
    n_val = round(val_fraction * len(rest))
    if val_fraction > 0 and len(rest) >= 2:
        n_val = min(max(n_val, 1), len(rest) - 1)
    else:
        n_val = 0
    ranked = sorted(rest, key=lambda c: hashlib.sha256(f"{seed}:{c}".encode()).hexdigest())
    val = set(ranked[:n_val])
    out.update({c: ("val" if c in val else "train") for c in rest})
    return out


# --------------------------------------------------------------------------------------------
# data set
# --------------------------------------------------------------------------------------------
@dataclass
class FinetuneDataset:
    """Configurations per split and the manifest describing them."""

    structures: dict[str, list[Atoms]]
    manifest: dict[str, Any]

    def counts(self) -> dict[str, int]:
        return {k: len(v) for k, v in self.structures.items()}


def _sha256(path: str | Path) -> str:
    from tdphonon.potentials import sha256_file

    return sha256_file(path)


def build_dataset(entries: Iterable[HarmonicEntry | SkippedEntry],
                  settings: DatasetSettings | None = None, base_potential=None) -> FinetuneDataset:
    """Generate the configurations of every entry and split them by compound.

    Parameters
    ----------
    entries
        :class:`HarmonicEntry` objects (e.g. from :func:`~tdphonon.finetune.sources.iter_database`,
        consumed one at a time); :class:`SkippedEntry` items are carried into the manifest. An entry
        whose label repeats an earlier one, or whose generation fails, is skipped with the reason.
    settings
        :class:`DatasetSettings` (defaults: 10 random configurations, 0.01–0.05 Å, 5 % validation).
    base_potential
        The base model as a :class:`~tdphonon.potentials.Potential`; needed (and recorded) only for
        ``thermal_labels="base_anharmonic"`` and for replay structures (:func:`needs_base_model`).

    Returns
    -------
    FinetuneDataset
        ``structures[split]`` and the manifest (file checksums are added by :func:`write_dataset`).
    """
    from tdphonon.potentials import package_versions

    s = settings or DatasetSettings()
    per_compound: dict[str, list[Atoms]] = {}
    records: list[dict[str, Any]] = []
    sources: list[dict[str, Any]] = []
    skipped: list[dict[str, str]] = []
    labels: set[str] = set()
    label_to_compound: dict[str, str] = {}
    formula_of: dict[str, str] = {}  # compound id -> reduced formula (replay skips DFT formulas)
    sha_cache: dict[str, str] = {}
    for item in entries:
        if isinstance(item, SkippedEntry):
            skipped.append(item.to_dict())
            continue
        if item.label in labels:
            skipped.append({"label": item.label, "path": item.source, "reason": "duplicate label"})
            continue
        try:
            atoms, rec = compound_configurations(item, s, base_potential)
        except TDPhononError as exc:
            skipped.append({"label": item.label, "path": item.source, "reason": exc.reason})
            continue
        labels.add(item.label)
        label_to_compound[item.label] = rec["compound"]
        formula_of[rec["compound"]] = item.formula
        per_compound.setdefault(rec["compound"], []).extend(atoms)
        records.append(rec)
        files = []
        for f in item.files:
            if f not in sha_cache:
                sha_cache[f] = _sha256(f) if Path(f).is_file() else "missing"
            files.append({"path": str(f), "sha256": sha_cache[f]})
        summ = item.summary()
        sources.append({"label": item.label, "compound": rec["compound"], "source": item.source, "files": files,
                        "functional": item.functional, "notes": summ["notes"], "checks": summ["checks"],
                        "n_atoms_supercell": summ["n_atoms_supercell"],
                        "supercell_matrix": summ["supercell_matrix"], "born": item.born,
                        "raw_displacement_sets": summ["raw_displacement_sets"]})
    held = {label_to_compound.get(h, h) for h in s.held_out}
    missing = sorted(h for h in s.held_out if h not in label_to_compound and h not in per_compound)
    split_of = split_by_compound(per_compound, s.val_fraction, held, s.seed)
    replay = _replay(s, split_of, formula_of, base_potential)
    structures: dict[str, list[Atoms]] = {k: [] for k in SPLITS}
    compounds: dict[str, Any] = {}
    for comp in sorted(per_compound):
        split = split_of[comp]
        kinds: dict[str, int] = {}
        for a in per_compound[comp]:
            a.info["split"] = split
            kinds[a.info["kind"]] = kinds.get(a.info["kind"], 0) + 1
        structures[split].extend(per_compound[comp])
        recs = [r for r in records if r["compound"] == comp]
        funcs = sorted({src["functional"] or "unknown" for src in sources if src["compound"] == comp})
        warn = []
        if len(funcs) > 1:
            warn.append(f"entries of this compound use different functionals: {', '.join(funcs)}")
        e0s = {r["label"]: r["energy0"] / r["n_atoms"] for r in recs if r["energy0"] is not None}
        if len(e0s) > 1 and max(e0s.values()) - min(e0s.values()) > 0.5e-3:
            spread = (max(e0s.values()) - min(e0s.values())) * 1e3
            warn.append(f"energy references E0/atom of {', '.join(sorted(e0s))} differ by {spread:.2f} meV/atom "
                        "(different DFT settings: their energies are not on one scale)")
        compounds[comp] = {"split": split, "labels": sorted(r["label"] for r in recs),
                           "n_structures": len(per_compound[comp]), "kinds": kinds,
                           "energy_available": int(sum(bool(a.info["energy_available"]) for a in per_compound[comp])),
                           "functionals": funcs, "warnings": warn}
    structures["train"].extend(replay.pop("structures"))
    functionals = sorted({src["functional"] or "unknown" for src in sources})
    manifest = {
        "format": MANIFEST_FORMAT,
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "settings": s.to_dict(),
        "seed": s.seed,
        "splits": {k: {"n_structures": len(v),
                       "compounds": sorted(c for c, sp in split_of.items() if sp == k)} for k, v in structures.items()},
        "compounds": compounds,
        "replay": replay,
        "entries": records,
        "sources": sources,
        "skipped": skipped,
        "held_out_not_found": missing,
        "functionals": functionals,
        "mixed_functionals": len(functionals) > 1,
        "forces": "F = -Phi u (exact harmonic forces of the DFT force constants) for random/modes/thermal; "
                  "plus the base model's anharmonic remainder for thermal+base_anharmonic; DFT for raw:*; "
                  "the base model's forces for replay:base",
        "base_model_for_labels": (base_potential.identity.to_dict()
                                  if base_potential is not None and needs_base_model(s) else None),
        "units": {"length": "Å", "energy": "eV", "forces": "eV/Å"},
        "versions": package_versions(),
    }
    return FinetuneDataset(structures, manifest)


def needs_base_model(settings: DatasetSettings) -> bool:
    """Whether building a data set with these settings runs the base model (base-anharmonic or replay labels)."""
    return settings.thermal_labels == "base_anharmonic" or bool(settings.replay and settings.n_replay)


def _replay(s: DatasetSettings, split_of: dict[str, str], formula_of: dict[str, str],
            base_potential) -> dict[str, Any]:
    """The replay configurations (``"structures"``, all for the training split) and their manifest record.

    ``split_of`` maps compound ids to their split, ``formula_of`` to their reduced formulas.
    """
    if not (s.replay and s.n_replay):
        return {"structures": [], "n_structures": 0, "elements": [], "structures_used": [], "skipped": []}
    if base_potential is None:
        raise ValueError("replay structures need the base model (base_potential) for their labels")
    from pymatgen.core import Composition

    elements = sorted({el.symbol for c, sp in split_of.items() if sp != "test"
                       for el in Composition(formula_of[c]).elements})
    dft_formulas = set(formula_of.values())
    held_formulas = {formula_of[c] for c, sp in split_of.items() if sp == "test"}
    candidates, skipped = replay_structures(s.replay, elements)
    out: list[Atoms] = []
    used: list[dict[str, Any]] = []
    for label, atoms, source in candidates:
        formula = reduced_formula(atoms)
        if formula in dft_formulas:
            why = ("a held-out compound: it must stay unseen" if formula in held_formulas
                   else "a compound with DFT data: the DFT data decide there")
            skipped.append({"label": label, "path": source, "reason": f"reduced formula {formula} is {why}"})
            continue
        try:
            structs, rec = replay_configurations(label, atoms, base_potential, s, source)
        except TDPhononError as exc:
            skipped.append({"label": label, "path": source, "reason": exc.reason})
            continue
        for a in structs:
            a.info["split"] = "train"
        out.extend(structs)
        used.append(rec)
    return {"structures": out, "n_structures": len(out), "elements": elements, "structures_used": used,
            "skipped": skipped}


def write_dataset(dataset: FinetuneDataset, folder: str | Path, overwrite: bool = False) -> Path:
    """Write ``train.extxyz``, ``val.extxyz`` (``test.extxyz`` if any held-out) and ``manifest.json``.

    Returns the manifest path. Refuses to overwrite an existing manifest unless ``overwrite``.
    """
    import ase.io

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    mpath = folder / "manifest.json"
    if mpath.exists() and not overwrite:
        raise FileExistsError(f"{mpath} exists (pass overwrite=True)")
    manifest = json.loads(json.dumps(dataset.manifest, default=_json_default))
    files: dict[str, Any] = {}
    for split in SPLITS:
        structs = dataset.structures.get(split, [])
        if split == "test" and not structs:
            continue
        path = folder / f"{split}.extxyz"
        if structs:
            ase.io.write(path, structs, format="extxyz")
        else:
            path.write_text("")
        files[split] = {"file": path.name, "n_structures": len(structs), "sha256": _sha256(path)}
    manifest["files"] = files
    mpath.write_text(json.dumps(manifest, indent=1, default=_json_default))
    return mpath


def _json_default(o: Any):
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o)}")


def load_dataset(folder: str | Path, splits: Sequence[str] | None = None,
                 verify: bool = True) -> dict[str, list[Atoms]]:
    """Read a data set written by :func:`write_dataset`: ``{split: [Atoms, ...]}``.

    Forces are ``atoms.get_forces()`` (a ``SinglePointCalculator``), energies ``atoms.get_potential_energy()``
    only where ``atoms.info["energy_available"]``. With ``verify`` the sha256 and the number of
    structures of each file are checked against ``manifest.json`` (:class:`DataError` on mismatch).
    """
    import ase.io

    folder = Path(folder)
    mpath = folder / "manifest.json"
    if not mpath.is_file():
        raise DataError(None, f"{mpath}: missing")
    try:
        manifest = json.loads(mpath.read_text())
        files = manifest["files"]
    except (json.JSONDecodeError, KeyError) as exc:
        raise DataError(None, f"{mpath}: not a tdphonon fine-tuning manifest ({exc})") from exc
    out: dict[str, list[Atoms]] = {}
    for split, meta in files.items():
        if splits is not None and split not in splits:
            continue
        path = folder / meta["file"]
        if not path.is_file():
            raise DataError(None, f"{path}: missing (listed in {mpath.name})")
        if verify and _sha256(path) != meta["sha256"]:
            raise DataError(None, f"{path}: sha256 differs from {mpath.name}")
        structs = ase.io.read(path, index=":", format="extxyz") if path.stat().st_size else []
        if verify and len(structs) != meta["n_structures"]:
            raise DataError(None, f"{path}: {len(structs)} structures, manifest says {meta['n_structures']}")
        out[split] = list(structs)
    return out
