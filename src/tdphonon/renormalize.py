"""Effective (temperature-renormalised) force constants Φ(T) = ⟨∂²V/∂u∂u⟩_{Σ(T)} (physics.md §1–2).

Three estimators of the thermal average of the Hessian over u ~ N(0, Σ(T)):

``hessian``
    ``potential.hessians`` at every displaced supercell, averaged, converted (3N, 3N) → (N, N, 3, 3)
    and projected onto the space-group + lattice-translation + permutation + acoustic-sum-rule
    symmetric subspace with the symfc projector (:class:`~tdphonon.sampling.FCProjector`).
    Projection = averaging over all symmetry images of each configuration.
``force_fit``
    Least squares of the forces on the displacements in the same symmetric basis (symfc; identical to
    phonopy's ``produce_force_constants(fc_calculator="symfc")`` on the dataset
    ``{"displacements": u, "forces": F}``). By Stein's lemma E[u Fᵀ] = −Σ E[H] this converges to the
    same ⟨H⟩ for Gaussian samples with one force call per configuration instead of a Hessian.
    With ± antithetic pairs the cubic (even-force) noise cancels exactly.
``quartic_fit``
    Model-based (:mod:`tdphonon.taylor`): Φ₂ (same symfc basis) and Φ₄ (hiPhive cluster space up
    to ``quartic_shells`` neighbour shells) are fitted to the odd forces [F(u) − F(−u)]/2 of the ±
    pairs, and ⟨H⟩_Σ = Φ₂ + ½Φ₄:Σ in closed form. No sampling noise once the fit is determined (a
    few pairs); instead the truncation error of a quartic model, measured by the fit residual
    (recorded per iteration). Self-consistently, each iteration jumps to the SCPH fixed point of
    the fitted model (solved on the commensurate q-points without force calls) instead of mixing,
    so the loop stops after 2–3 iterations, and the returned Φ(T) is the fixed point of the last
    fitted model (``quartic_output="fixed_point"``, default) rather than one more Picard step
    ⟨H⟩_{Σ(Φ_k)} (``"estimate"``), which differs from it by about the last self-consistency
    residual (a run stopped by ``max_iterations``, or one with few configurations per iteration,
    is then still a step away). Needs ``antithetic=True``.

Schemes
-------
one-shot (the paper)
    Σ from the symmetrised harmonic Φ⁰, one round: Φ(T) = ⟨H⟩_{Σ(Φ⁰)}.
self-consistent (SCHA)
    Φ_{k+1} = (1 − α) Φ_k + α ⟨H⟩_{Σ(Φ_k)}, α = ``mixing`` (default 0.5: the simplest damping that
    stops the period-2 oscillation of soft modes). A soft mode whose ω² is raised by a large
    anharmonic term makes the map steep: near the fixed point its slope is about −λσ²/ω² (σ² ∝ 1/ω²
    classically), and linear mixing converges only for α < 2/(1 − slope). With ``adaptive_mixing``
    (default) α is therefore halved, down to ``min_mixing``, after an overshoot: the undamped update
    ⟨H⟩ − Φ reversed its direction and the residual grew. The α of every step and the ratio of
    successive updates are recorded in the history (``mixing``, ``step_ratio``). Converged when the
    commensurate-q frequencies of ⟨H⟩_{Σ(Φ_k)} and Φ_k differ by less than ``tol_thz`` (the
    undamped fixed-point residual); then Φ(T) = ⟨H⟩_{Σ(Φ_k)}. A list of
    temperatures is scanned from high to low, each starting from the previous result (warm start).
    Sampling noise sets a floor to the residual: ``tol_thz`` must exceed the frequency noise of one
    estimate (reported in the history). With ``noise_tol = z > 0`` a run also stops when every mode's
    change |ν_out − ν_in| is within z of its standard error (batch means of the estimate's
    configurations; ``residual_sigmas`` and ``frequency_error_thz`` in the history): at the fixed
    point the residual is noise, which more iterations cannot resolve, only more configurations
    (python-sscha's ``meaningful_factor`` plays the same role). The history then says
    ``converged_on: "noise"``.

Error bars
----------
With ``n_seeds_for_error ≥ 2`` the final Σ is sampled with that many independent seeds and Φ(T) is
their mean; otherwise the configurations (± pairs kept together) are split into
``n_blocks_for_error`` blocks (batch means). Reported errors are standard errors of the returned
Φ(T) (std of the estimates / √n_estimates) for the force constants, commensurate-q frequencies and
metrics. For self-consistent ``quartic_fit`` runs the estimates are the fixed points of the models
fitted to each seed's (or block's) configurations.

Seeds are derived deterministically from ``settings.seed``, the temperature (mK) and the iteration:
same settings ⇒ identical results.

Robustness
----------
Per-configuration outliers (non-finite or above the model's limit, max|F| far above the typical
force, energy per atom far above the median: MLIP extrapolation) raise
:class:`~tdphonon.errors.UnphysicalForcesError` naming the material, or, with ``drop_outliers=True``,
are dropped (with their antithetic partner) and recorded — never silently averaged. A unit cell
that is within ``loose_symprec`` of a higher space group (e.g. a relaxation that broke the symmetry)
is recorded and warned about (or raises :class:`~tdphonon.errors.RelaxationError`).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from scipy.special import logsumexp

from tdphonon.errors import RelaxationError, SamplingError, TDPhononError, UnphysicalForcesError
from tdphonon.harmonic import fresh_phonopy
from tdphonon.metrics import (
    DEFAULT_REL_THRESHOLD,
    anharmonicity_score,
    frequency_shift,
    onsite_report,
    r_full,
    r_full_noise_floor,
)
from tdphonon.sampling import (
    CapMode,
    FCProjector,
    ModeAmplitudePolicy,
    ModeMethod,
    SamplingKind,
    SamplingResult,
    ThermalCovariance,
    commensurate_frequencies,
    derive_seed,
    fc_mass_weight,
    full_force_constants,
    matrix_to_fc,
    normal_modes,
    sample_displacements,
    supercell_to_ase,
    thermal_covariance,
)

__all__ = [
    "FCProjector",
    "RenormalizationResult",
    "TDPHSettings",
    "adapt_mixing",
    "initial_samples",
    "phonopy_with_force_constants",
    "renormalize",
    "renormalize_temperature",
    "structure_symmetry",
]

Estimator = Literal["hessian", "force_fit", "quartic_fit"]


# --------------------------------------------------------------------------------------------
# settings
# --------------------------------------------------------------------------------------------
#: options added after results were stored, and their "off" value: left out of :meth:`TDPHSettings.digest`
#: while off (:meth:`TDPHSettings.without_off_options`; campaign keys use :data:`OPTION_HISTORY`)
_OFF_OPTIONS: dict[str, Any] = {"noise_tol": 0.0, "target_error_thz": 0.0}

#: TDPH options added after campaigns first stored results (commit 9f49e15), oldest first: the commit
#: that added them and, per option, the value that reproduces the behaviour from before it existed
#: (``None``: no value does, so a key from before applies only where the option has no effect, see
#: :meth:`TDPHSettings.inert_options`). Campaign keys (:func:`tdphonon.jobs.settings_digests`) use it
#: to find results stored by earlier versions. A new option goes at the end, with that value.
OPTION_HISTORY: tuple[tuple[str, dict[str, Any]], ...] = (
    ("7e58118", {"reuse_samples": False, "min_effective_fraction": None}),
    ("4b95bbd", {"quartic_shells": None, "quartic_acoustic_sum_rules": None}),
    ("934842f", {"quartic_output": "estimate"}),
    ("8949713", {"adaptive_mixing": False, "min_mixing": None}),
    ("d61c802", {"noise_tol": 0.0}),
    ("a41d854", {"target_error_thz": 0.0}),
)

#: options of the self-consistent iteration (no effect on one-shot runs)
_SC_ONLY_OPTIONS = frozenset({"mixing", "adaptive_mixing", "min_mixing", "tol_thz", "noise_tol", "target_error_thz",
                              "max_iterations", "warm_start", "reuse_samples", "min_effective_fraction",
                              "quartic_output"})


@dataclass(frozen=True)
class TDPHSettings:
    """All choices that determine Φ(T) (recorded with every result; :meth:`digest` identifies them).

    Attributes
    ----------
    estimator
        ``"hessian"`` (average of model Hessians, projected), ``"force_fit"`` (symfc least squares) or
        ``"quartic_fit"`` (Φ₂ + Φ₄ fitted to the odd ± forces, ⟨H⟩ in closed form; see module docstring).
    n_configurations
        Configurations per estimate (per iteration); even when ``antithetic``.
    sampling
        ``"gaussian"`` or ``"fixed_amplitude"`` (|ξ_s| = 1, random signs; less noise, small bias from
        ≥ 6th-order terms).
    antithetic
        Draw ± pairs (u, −u).
    quantum
        Bose–Einstein amplitudes (default) or classical.
    policy
        :class:`~tdphonon.sampling.ModeAmplitudePolicy` for imaginary / near-zero modes.
    self_consistent, mixing, tol_thz, max_iterations
        SCHA iteration (see module docstring). ``tol_thz`` is on commensurate-q frequencies.
    adaptive_mixing, min_mixing
        Self-consistent runs only: halve α (not below ``min_mixing``) after an overshoot (the
        update reversed and the residual grew), which damps the period-2 oscillation of steep soft
        modes (module docstring). ``adaptive_mixing=False`` keeps α = ``mixing`` throughout
        (plain linear mixing).
    noise_tol
        Self-consistent runs only: also converged when every commensurate-q frequency changed by
        less than ``noise_tol`` of its standard errors (batch means over ``n_blocks_for_error``
        blocks; needs ``n_seeds_for_error = 1``; acoustic Γ modes left out; 3 is a sensible value).
        0 (default): ``tol_thz`` only.
    target_error_thz
        With ``noise_tol`` and ``reuse_samples``: the noise stop waits until the largest standard error
        of the commensurate-q frequencies is also ≤ this (THz). At the fixed point every iteration adds
        its configurations to the reweighted pool, so the error falls like 1/√(pool) and the run buys
        the precision asked for (or reports ``converged = False`` at ``max_iterations``). 0 (default):
        stop on noise at any error.
    seed
        Base seed; per-temperature, per-iteration seeds are derived from it.
    n_seeds_for_error
        ≥ 2: independent seeds at the final Σ (Φ(T) is their mean); 1: batch means over
        ``n_blocks_for_error`` blocks of the configurations.
    max_displacement, max_displacement_ratio, cap_mode, min_distance, min_distance_ratio
        Sampling safety: per-atom cap (Å; default ``max_displacement_ratio`` × shortest reference
        distance) with ``"raise"``/``"clip"``; minimum interatomic distance (Å; default
        ``min_distance_ratio`` × shortest reference distance).
    drop_outliers, outlier_force_ratio, outlier_energy_per_atom
        Outlier handling: a configuration with max|F| > ratio × median rms|F|, or energy per atom
        above the median by more than max(``outlier_energy_per_atom``, 10 robust σ), is an outlier.
    mode_method
        ``"commensurate"`` or ``"supercell"`` construction of the normal modes.
    hessian_delta
        Finite-difference step (Å) for models without analytic Hessians.
    warm_start
        Start each (lower) temperature from the previous self-consistent result.
    reuse_samples, min_effective_fraction
        Self-consistent runs only: estimate ⟨H⟩_{Σ(Φ_k)} from the configurations of *all* iterations
        so far, importance-reweighted to Σ(Φ_k) (SSCHA-style reweighting; balance-heuristic weights
        ρ_k(u) / Σ_j (n_j/n) ρ_j(u) over the Gaussian densities the ensembles were drawn from). An
        earlier ensemble is dropped from the pool once its own effective sample size for Σ(Φ_k)
        falls below ``min_effective_fraction`` of its size. Gaussian sampling only. Near convergence
        Σ changes little, so the noise falls like 1/√(all configurations) instead of staying at the
        one-iteration level.
    loose_symprec, symmetry_loss
        Tolerance used to detect a structure close to a higher symmetry, and ``"warn"``/``"raise"``.
    quartic_shells, quartic_acoustic_sum_rules
        ``quartic_fit`` only: neighbour shells of the Φ₄ clusters, and whether Φ₄ obeys the acoustic
        (translational) sum rules (true for any physical potential; off only for models that pin
        atoms, such as an on-site term).
    quartic_output
        Self-consistent ``quartic_fit`` only: ``"fixed_point"`` returns the SCPH fixed point
        Φ = Φ₂ + ½Φ₄:Σ(Φ) of the final fitted model (of each seed's / block's model for the error
        bar); ``"estimate"`` returns ⟨H⟩ at the last sampled Σ (one Picard step). Where the model's
        own iteration does not converge, the estimate is returned and the history says so.
    """

    estimator: Estimator = "hessian"
    n_configurations: int = 16
    sampling: SamplingKind = "gaussian"
    antithetic: bool = True
    quantum: bool = True
    policy: ModeAmplitudePolicy = field(default_factory=ModeAmplitudePolicy)
    self_consistent: bool = False
    mixing: float = 0.5
    adaptive_mixing: bool = True
    min_mixing: float = 0.05
    tol_thz: float = 0.05
    noise_tol: float = 0.0
    target_error_thz: float = 0.0
    max_iterations: int = 20
    seed: int = 0
    n_seeds_for_error: int = 1
    n_blocks_for_error: int = 8
    max_displacement: float | None = None
    max_displacement_ratio: float = 0.5
    cap_mode: CapMode = "raise"
    min_distance: float | None = None
    min_distance_ratio: float = 0.5
    drop_outliers: bool = False
    outlier_force_ratio: float = 12.0
    outlier_energy_per_atom: float = 0.1
    mode_method: ModeMethod = "commensurate"
    hessian_delta: float = 0.01
    warm_start: bool = True
    reuse_samples: bool = False
    min_effective_fraction: float = 0.3
    loose_symprec: float = 0.05
    symmetry_loss: Literal["warn", "raise"] = "warn"
    quartic_shells: int = 2
    quartic_acoustic_sum_rules: bool = True
    quartic_output: Literal["fixed_point", "estimate"] = "fixed_point"

    def __post_init__(self) -> None:
        if isinstance(self.policy, dict):
            object.__setattr__(self, "policy", ModeAmplitudePolicy(**self.policy))
        if self.estimator not in ("hessian", "force_fit", "quartic_fit"):
            raise ValueError(f"unknown estimator {self.estimator!r}")
        if self.estimator == "quartic_fit" and not self.antithetic:
            raise ValueError("estimator='quartic_fit' fits the odd forces of ± pairs: it needs antithetic=True")
        if self.quartic_shells < 1:
            raise ValueError("quartic_shells must be ≥ 1")
        if self.quartic_output not in ("fixed_point", "estimate"):
            raise ValueError(f"quartic_output must be 'fixed_point' or 'estimate', got {self.quartic_output!r}")
        if self.sampling not in ("gaussian", "fixed_amplitude"):
            raise ValueError(f"unknown sampling kind {self.sampling!r}")
        if self.n_configurations < 1 or (self.antithetic and self.n_configurations % 2):
            raise ValueError("n_configurations must be ≥ 1 (and even with antithetic pairs)")
        if not 0.0 < self.mixing <= 1.0:
            raise ValueError("mixing must be in (0, 1]")
        if not 0.0 < self.min_mixing <= self.mixing:
            raise ValueError("min_mixing must be in (0, mixing]")
        if self.max_iterations < 1 or self.tol_thz <= 0:
            raise ValueError("max_iterations must be ≥ 1 and tol_thz > 0")
        if self.noise_tol < 0 or (self.noise_tol > 0 and self.n_seeds_for_error > 1):
            raise ValueError("noise_tol must be ≥ 0, and > 0 only with n_seeds_for_error = 1 (its standard "
                             "errors are batch means of each iteration's configurations)")
        if self.target_error_thz < 0 or (self.target_error_thz > 0 and not (self.noise_tol > 0 and self.reuse_samples)):
            raise ValueError("target_error_thz must be ≥ 0, and > 0 only with noise_tol > 0 and reuse_samples=True "
                             "(without the pool each iteration's error stays at the one-iteration level)")
        if self.n_seeds_for_error < 1 or self.n_blocks_for_error < 1:
            raise ValueError("n_seeds_for_error and n_blocks_for_error must be ≥ 1")
        if self.reuse_samples and self.sampling != "gaussian":
            raise ValueError("reuse_samples needs sampling='gaussian' (reweighting uses the Gaussian densities)")
        if not 0.0 < self.min_effective_fraction <= 1.0:
            raise ValueError("min_effective_fraction must be in (0, 1]")
        if self.cap_mode not in ("raise", "clip") or self.symmetry_loss not in ("warn", "raise"):
            raise ValueError("cap_mode must be 'raise'/'clip' and symmetry_loss 'warn'/'raise'")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @staticmethod
    def without_off_options(d: Mapping[str, Any]) -> dict[str, Any]:
        """``d`` without the options added after results were stored that are off (``noise_tol`` = 0).

        :meth:`digest` hashes this, so adding such an option keeps the digests of stored results.
        """
        return {k: v for k, v in d.items() if not (k in _OFF_OPTIONS and v == _OFF_OPTIONS[k])}

    def inert_options(self) -> frozenset[str]:
        """Names of the options that cannot change the result of a run with these settings.

        The self-consistent options in a one-shot run, the ``quartic_*`` options with another
        estimator, ``min_mixing`` without adaptive mixing, ``min_effective_fraction`` without
        ``reuse_samples``.
        """
        inert = set()
        if not self.self_consistent:
            inert |= _SC_ONLY_OPTIONS
        if self.estimator != "quartic_fit":
            inert |= {"quartic_shells", "quartic_acoustic_sum_rules", "quartic_output"}
        if not self.adaptive_mixing:
            inert.add("min_mixing")
        if not self.reuse_samples:
            inert.add("min_effective_fraction")
        return frozenset(inert)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TDPHSettings:
        return cls(**dict(d))

    @classmethod
    def from_stored(cls, d: Mapping[str, Any]) -> TDPHSettings:
        """Settings stored by any version (a firework spec, a result document): an option added since
        (:data:`OPTION_HISTORY`) that ``d`` lacks takes the value that reproduces the behaviour from
        before it existed (e.g. ``adaptive_mixing=False``), not today's default; other missing
        options take their defaults. A rerun of a stored firework then does what it did then."""
        old = {k: v for _, added in OPTION_HISTORY for k, v in added.items() if v is not None}
        d = {k: v for k, v in dict(d).items() if k != "digest"}
        return cls(**{**old, **d})

    def digest(self) -> str:
        """sha256 of the sorted-key JSON of :meth:`to_dict` (stable across runs and processes).

        The ``quartic_*`` options enter only with ``estimator='quartic_fit'`` (the only estimator
        they affect), so digests of the other estimators are those of earlier versions; likewise
        ``adaptive_mixing``/``min_mixing`` enter only self-consistent digests (one-shot digests are
        unchanged), and ``noise_tol`` / ``target_error_thz`` only when they are on.
        """
        d = self.without_off_options(self.to_dict())
        if not self.self_consistent:
            d.pop("noise_tol", None)
            d.pop("target_error_thz", None)
        if self.estimator != "quartic_fit":
            d = {k: v for k, v in d.items() if not k.startswith("quartic_")}
        if not self.self_consistent:
            d = {k: v for k, v in d.items() if k not in ("adaptive_mixing", "min_mixing")}
        blob = json.dumps(d, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()


# --------------------------------------------------------------------------------------------
# results
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class RenormalizationResult:
    """Φ(T) of one material at one temperature, with everything needed to judge it.

    Attributes
    ----------
    label, temperature
        Material and K.
    force_constants
        Φ(T), (N, N, 3, 3) eV/Å², phonopy supercell order; exactly symmetric (projected).
    harmonic_force_constants
        The symmetrised Φ⁰ the run started from.
    qpoints
        (N_L, 3) commensurate q-points (primitive reciprocal reduced coordinates).
    frequencies, harmonic_frequencies
        (N_L, 3n_p) signed THz at ``qpoints`` for Φ(T) and Φ⁰.
    frequency_error
        Standard error of ``frequencies`` (NaN when no error estimate was possible).
    force_constants_error
        Standard error of Φ(T), (N, N, 3, 3).
    named_frequencies, named_harmonic_frequencies
        Frequencies at the caller's named q-points (phonopy interpolation; NAC if set on the input).
    converged
        Self-consistent run: whether the residual fell below ``tol_thz``; one-shot: ``None``.
    history
        One dict per iteration (seed, residual, min frequency, mode report, outliers, timings).
    force_calls, hessian_calls
        Model cost at this temperature (deltas of ``potential.force_calls`` / ``potential.hessian_calls``;
        finite-difference Hessians also count their 6N force calls in ``force_calls``).
    seeds
        All sampling seeds used (derived from ``settings["seed"]``).
    settings
        ``TDPHSettings.to_dict()`` plus its digest and the model identity.
    timings
        Seconds: ``sampling``, ``model``, ``estimator``, ``total``.
    errors
        Error-estimate method and standard errors of the metrics.
    metrics
        ``r_full``, ``r_full_noise_floor``, ``r_onsite`` (per site + maximum), ``frequency_shift``
        (commensurate q), ``anharmonicity`` (σᴬ from the final samples), ``symmetry_residual``.
    mode_report
        Imaginary / soft modes of the harmonic model (and of the final Σ); ``policy_dependent``: the
        final Σ had modes set by the imaginary / near-zero policy (a warning says so), so Φ(T) — and
        near an instability the self-consistent fixed point itself — depends on that policy;
        ``imaginary_fixed_point`` (self-consistent runs; ``None`` one-shot): the run converged to a Φ(T)
        that still has imaginary modes. Σ of such modes exists only through the policy (|ν| or a floor),
        so it is not a SCHA solution: read ``converged`` together with this flag.
    outliers
        Dropped configurations (empty unless ``drop_outliers``).
    symmetry
        :func:`structure_symmetry` of the input structure.
    """

    label: str
    temperature: float
    force_constants: np.ndarray
    harmonic_force_constants: np.ndarray
    qpoints: np.ndarray
    frequencies: np.ndarray
    harmonic_frequencies: np.ndarray
    frequency_error: np.ndarray
    force_constants_error: np.ndarray
    named_frequencies: dict
    named_harmonic_frequencies: dict
    converged: bool | None
    history: tuple
    force_calls: int
    hessian_calls: int
    seeds: tuple
    settings: dict
    timings: dict
    errors: dict
    metrics: dict
    mode_report: dict
    outliers: tuple
    symmetry: dict

    @property
    def n_iterations(self) -> int:
        return len(self.history)

    def phonopy(self, phonon):
        """A new :class:`phonopy.Phonopy` (same structure as ``phonon``) carrying Φ(T)."""
        return phonopy_with_force_constants(phonon, self.force_constants)

    def to_dict(self, include_arrays: bool = False) -> dict[str, Any]:
        """JSON-able summary (large arrays only with ``include_arrays``)."""
        d: dict[str, Any] = {
            "label": self.label, "temperature": self.temperature, "converged": self.converged,
            "n_iterations": self.n_iterations, "history": list(self.history), "force_calls": self.force_calls,
            "hessian_calls": self.hessian_calls, "seeds": list(self.seeds), "settings": self.settings,
            "timings": self.timings, "errors": self.errors, "metrics": self.metrics,
            "mode_report": self.mode_report, "outliers": list(self.outliers), "symmetry": self.symmetry,
            "qpoints": self.qpoints.tolist(), "frequencies": self.frequencies.tolist(),
            "harmonic_frequencies": self.harmonic_frequencies.tolist(),
            "frequency_error": np.where(np.isfinite(self.frequency_error), self.frequency_error,
                                        -1.0).tolist(),
            "named_frequencies": {k: np.asarray(v).tolist() for k, v in self.named_frequencies.items()},
            "named_harmonic_frequencies": {k: np.asarray(v).tolist()
                                           for k, v in self.named_harmonic_frequencies.items()},
        }
        if include_arrays:
            d["force_constants"] = self.force_constants.tolist()
            d["harmonic_force_constants"] = self.harmonic_force_constants.tolist()
            d["force_constants_error"] = self.force_constants_error.tolist()
        return d


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------
def phonopy_with_force_constants(phonon, force_constants: np.ndarray):
    """A new :class:`phonopy.Phonopy` with the structure (and NAC parameters) of ``phonon`` and Φ.

    The input object is not modified; the supercell atom order is the same, so phonopy-format
    Φ(T) from :func:`renormalize` can be used for bands, DOS, thermal properties or yaml output.
    """
    ph = fresh_phonopy(phonon)
    fc = np.asarray(force_constants, dtype=float)
    n = len(ph.supercell)
    if fc.shape != (n, n, 3, 3):
        raise ValueError(f"force constants must have shape {(n, n, 3, 3)}, got {fc.shape}")
    ph.force_constants = np.array(fc, dtype="double", order="C")
    nac = getattr(phonon, "nac_params", None)
    if nac is not None:
        ph.nac_params = nac
    return ph


def structure_symmetry(phonon, loose_symprec: float = 0.05) -> dict[str, Any]:
    """Space group of the unit cell at phonopy's tolerance and at ``loose_symprec``.

    ``near_higher_symmetry`` is True when the loose tolerance finds more operations: the structure
    is a slightly distorted version of a more symmetric one (e.g. a relaxation that broke the
    symmetry, or noise), and its force constants are only projected onto the lower symmetry.
    """
    import spglib

    cell = phonon.unitcell
    spg_cell = (np.asarray(cell.cell), np.asarray(cell.scaled_positions), np.asarray(cell.numbers))
    tight = float(phonon.symmetry.tolerance)
    ds_t = spglib.get_symmetry_dataset(spg_cell, symprec=tight)
    ds_l = spglib.get_symmetry_dataset(spg_cell, symprec=max(loose_symprec, tight))
    n_t = len(ds_t.rotations) if ds_t is not None else 1
    n_l = len(ds_l.rotations) if ds_l is not None else 1
    return {
        "spacegroup": ds_t.international if ds_t is not None else "P1",
        "spacegroup_number": int(ds_t.number) if ds_t is not None else 1,
        "n_operations": n_t,
        "symprec": tight,
        "spacegroup_loose": ds_l.international if ds_l is not None else "P1",
        "n_operations_loose": n_l,
        "loose_symprec": float(loose_symprec),
        "near_higher_symmetry": bool(n_l > n_t),
    }


def _temperature_key(t: float) -> int:
    return round(float(t) * 1000.0)


@dataclass
class _Context:
    phonon: Any
    potential: Any
    label: str
    settings: TDPHSettings
    projector: FCProjector
    fc0: np.ndarray
    reference: Any
    natom: int
    equivalent: np.ndarray
    _quartic_fitter: Any = None

    @property
    def quartic_fitter(self):
        """The :class:`~tdphonon.taylor.QuarticFitter` of this supercell (built on first use)."""
        if self._quartic_fitter is None:
            from tdphonon.taylor import QuarticFitter

            s = self.settings
            self._quartic_fitter = QuarticFitter(self.phonon, self.projector, quartic_shells=s.quartic_shells,
                                                 acoustic_sum_rules=s.quartic_acoustic_sum_rules)
        return self._quartic_fitter

    @functools.cached_property
    def mass_weight(self) -> np.ndarray:
        """√(m_i m_j) (amu) in the (N, N, 1, 1) layout of the force constants."""
        return fc_mass_weight(self.phonon.supercell)

    def quartic_estimate(self, u: np.ndarray, f: np.ndarray, covariance: np.ndarray,
                         weights: np.ndarray | None = None):
        """(⟨H⟩_Σ of the fitted quartic model, projected; the model)."""
        try:
            model = self.quartic_fitter.fit(u, f, weights)
        except ValueError as exc:
            raise SamplingError(self.label, f"quartic_fit: {exc}") from exc
        return self.projector.project(model.thermal_force_constants(covariance)), model


@dataclass
class _Estimate:
    fc: np.ndarray | None  # None: not fitted (an ensemble that only joins a reuse pool)
    block_sums: np.ndarray | None  # hessian: per-block sums of Hessians (n_blocks, 3N, 3N)
    block_counts: np.ndarray | None
    block_index: np.ndarray  # block of each kept configuration
    displacements: np.ndarray
    forces: np.ndarray
    dropped: list
    n_hessians: int
    n_clipped: int
    min_distance: float
    timings: dict
    hessians: np.ndarray | None = None  # per kept configuration, only kept for sample reuse
    weights: np.ndarray | None = None  # importance weights (pooled estimates); None = uniform
    pool: dict | None = None  # pooled estimates: ensembles used, effective sample size
    model: Any = None  # quartic_fit: the fitted QuarticModel
    covariance: np.ndarray | None = None  # quartic_fit: the Σ the estimate is for (block estimates)


@dataclass
class _Ensemble:
    """The kept configurations of one iteration and the Gaussian they were drawn from (reuse)."""

    displacements: np.ndarray  # (n, N, 3)
    forces: np.ndarray
    hessians: np.ndarray | None
    units: np.ndarray  # antithetic unit of each configuration (pairs share one)
    eigvals: np.ndarray  # Σ = V diag(λ) Vᵀ restricted to its support (λ > 0)
    eigvecs: np.ndarray
    iteration: int

    @classmethod
    def from_estimate(cls, est: _Estimate, cov: ThermalCovariance, iteration: int, antithetic: bool) -> _Ensemble:
        w, v = np.linalg.eigh(cov.matrix)
        keep = w > 1e-10 * max(float(w.max()), 1e-300)
        n = len(est.displacements)  # kept configurations: ± pairs stay adjacent
        units = np.arange(n) // 2 if antithetic else np.arange(n)
        return cls(est.displacements, est.forces, est.hessians, units, w[keep], v[:, keep], iteration)

    def covariance(self) -> np.ndarray:
        """Σ (3N × 3N) of the Gaussian this ensemble was drawn from."""
        return (self.eigvecs * self.eigvals) @ self.eigvecs.T

    def log_density(self, u: np.ndarray) -> np.ndarray:
        """log N(u; 0, Σ) up to the constant −(rank/2) log 2π; −∞ off the support of Σ."""
        x = u.reshape(len(u), -1)
        y = x @ self.eigvecs
        off = np.linalg.norm(x - y @ self.eigvecs.T, axis=1) > 1e-6 * (np.linalg.norm(x, axis=1) + 1e-12)
        logp = -0.5 * np.sum(y**2 / self.eigvals, axis=1) - 0.5 * float(np.sum(np.log(self.eigvals)))
        logp[off] = -np.inf
        return logp


def _pooled_estimate(ctx: _Context, pool: list[_Ensemble], n_blocks: int) -> _Estimate:
    """⟨H⟩ at the Gaussian of the last ensemble from every usable ensemble of ``pool`` (reweighted).

    Ensembles whose own effective sample size for the target falls below
    ``settings.min_effective_fraction`` of their size, or whose Σ has another support, are left
    out. Weights are the balance heuristic of multiple importance sampling,
    w(u) = ρ_t(u) / Σ_j (n_j / n) ρ_j(u), normalised to mean 1; a ± pair has equal weights.
    """
    s = ctx.settings
    target = pool[-1]
    rank = target.eigvals.size
    used: list[_Ensemble] = []
    per_ens: list[dict] = []
    for ens in pool:
        if ens is not target:
            if ens.eigvals.size != rank:
                per_ens.append({"iteration": ens.iteration, "used": False, "reason": "other support"})
                continue
            lw = target.log_density(ens.displacements) - ens.log_density(ens.displacements)
            w = np.exp(lw - np.max(lw)) if np.all(np.isfinite(lw)) else np.zeros(len(lw))
            ess = float(w.sum() ** 2 / np.sum(w**2)) if np.any(w > 0) else 0.0
            ok = ess >= s.min_effective_fraction * len(w)
            per_ens.append({"iteration": ens.iteration, "used": bool(ok), "effective_fraction": ess / len(w)})
            if not ok:
                continue
        used.append(ens)
    u = np.concatenate([e.displacements for e in used])
    f = np.concatenate([e.forces for e in used])
    sizes = np.array([len(e.displacements) for e in used], dtype=float)
    log_rho = np.stack([e.log_density(u) for e in used])  # (ensembles, configurations); target is last
    lw = log_rho[-1] - logsumexp(log_rho, axis=0, b=(sizes / sizes.sum())[:, None])
    w = np.exp(lw - np.max(lw))
    w *= len(w) / w.sum()
    ess = float(w.sum() ** 2 / np.sum(w**2))
    # batch-means blocks over the antithetic units of the whole pool, numbered consecutively
    offsets = np.cumsum([0] + [int(e.units.max()) + 1 for e in used[:-1]])
    unit_seq = np.concatenate([e.units + o for e, o in zip(used, offsets, strict=True)])
    nb = max(1, min(n_blocks, int(unit_seq.max()) + 1))
    block_index = unit_seq % nb
    sums = counts = model = None
    cov = None
    if s.estimator == "hessian":
        h = np.concatenate([e.hessians for e in used])
        sums = np.stack([np.tensordot(w[block_index == b], h[block_index == b], axes=1) for b in range(nb)])
        counts = np.array([w[block_index == b].sum() for b in range(nb)])
        fc = ctx.projector.project(matrix_to_fc(sums.sum(axis=0) / counts.sum()))
    elif s.estimator == "quartic_fit":  # a fit of the potential: weights only localise it to the target Σ
        cov = target.covariance()
        fc, model = ctx.quartic_estimate(u, f, cov, w)
    else:
        sw = np.sqrt(w)[:, None, None]
        fc = ctx.projector.fit(u * sw, f * sw)
    pool_info = {"n_configurations": len(w), "effective_sample_size": ess,
                 "iterations_used": [e.iteration for e in used], "ensembles": per_ens}
    return _Estimate(fc, sums, counts, block_index, u, f, [], 0, 0, float("nan"), {}, None, w, pool_info,
                     model, cov)


def _evaluate_forces(ctx: _Context, cells: list,
                     labels: list[str]) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """Energies and forces; model-level failures raise (naming the material) or are recorded.

    With ``drop_outliers`` the batch is evaluated once and each configuration validated on its own
    (NaN rows for the bad ones); only a batch that the model itself refuses is evaluated again one
    configuration at a time.
    """
    from tdphonon.potentials import validate_forces

    pot = ctx.potential
    try:
        e, f = pot.energies_and_forces(cells, labels=labels, validate=not ctx.settings.drop_outliers)
    except UnphysicalForcesError as exc:
        if not ctx.settings.drop_outliers:
            raise UnphysicalForcesError(ctx.label, f"{exc.reason} (configuration '{exc.label}')") from exc
    else:
        energies, forces = np.asarray(e, dtype=float), np.stack(f)
        bad = []
        for k, lab in enumerate(labels):
            try:
                validate_forces(forces[k], energies[k], lab, pot.max_force)
            except UnphysicalForcesError as exc:
                bad.append({"configuration": k, "reason": exc.reason})
                energies[k], forces[k] = np.nan, np.nan
        return energies, forces, bad
    energies = np.full(len(cells), np.nan)
    forces = np.full((len(cells), ctx.natom, 3), np.nan)
    bad: list[dict] = []
    for k, (a, lab) in enumerate(zip(cells, labels, strict=True)):
        try:
            e, f = pot.energies_and_forces([a], labels=[lab])
            energies[k], forces[k] = e[0], f[0]
        except UnphysicalForcesError as exc:
            bad.append({"configuration": k, "reason": exc.reason})
    return energies, forces, bad


def _screen_outliers(ctx: _Context, energies: np.ndarray, forces: np.ndarray) -> list[dict]:
    """Indices (with reasons) of configurations whose energy or forces are far off the rest."""
    s = ctx.settings
    out: list[dict] = []
    finite = np.isfinite(energies) & np.all(np.isfinite(forces), axis=(1, 2))
    if not np.any(finite):
        return [{"configuration": k, "reason": "non-finite energy/forces"} for k in range(len(energies))]
    norms = np.linalg.norm(forces[finite], axis=-1)
    rms = np.sqrt(np.mean(norms**2, axis=1))
    ref_rms = float(np.median(rms))
    epa = energies[finite] / ctx.natom
    med = float(np.median(epa))
    mad = float(np.median(np.abs(epa - med)))
    e_tol = max(s.outlier_energy_per_atom, 10.0 * 1.4826 * mad)
    for pos, k in enumerate(np.flatnonzero(finite)):
        fmax = float(norms[pos].max())
        if ref_rms > 0 and fmax > s.outlier_force_ratio * ref_rms:
            out.append({"configuration": int(k),
                        "reason": f"max|F| = {fmax:.3g} eV/Å > {s.outlier_force_ratio:g} x "
                                  f"median rms force {ref_rms:.3g} eV/Å"})
        elif epa[pos] - med > e_tol:
            out.append({"configuration": int(k),
                        "reason": f"energy {epa[pos]:.4f} eV/atom exceeds the median "
                                  f"{med:.4f} by more than {e_tol:.3g} eV/atom"})
    for k in np.flatnonzero(~finite):
        out.append({"configuration": int(k), "reason": "non-finite energy/forces"})
    return out


def _units(n: int, antithetic: bool) -> list[list[int]]:
    return [[k, k + 1] for k in range(0, n, 2)] if antithetic else [[k] for k in range(n)]


def _draw(ctx: _Context, cov: ThermalCovariance, seed: int) -> SamplingResult:
    s = ctx.settings
    return sample_displacements(
        cov, ctx.reference, s.n_configurations, kind=s.sampling, antithetic=s.antithetic, seed=seed,
        max_displacement=s.max_displacement, max_displacement_ratio=s.max_displacement_ratio,
        cap_mode=s.cap_mode, min_distance=s.min_distance,
        min_distance_ratio=s.min_distance_ratio, label=ctx.label)


def _estimate(ctx: _Context, cov: ThermalCovariance, seed: int, tag: str, n_blocks: int,
              expected: np.ndarray | None = None, fit: bool = True) -> _Estimate:
    """Draw from Σ, evaluate the model, and (``fit``) estimate ⟨H⟩ from these configurations alone.

    ``fit=False`` (sample reuse, where only the pooled estimate counts) skips the estimator: ``fc`` and
    ``model`` are ``None``; Hessians are still evaluated and kept for the pool.
    """
    s = ctx.settings
    t0 = time.perf_counter()
    samp = _draw(ctx, cov, seed)
    if expected is not None:
        exp = np.asarray(expected, dtype=float)
        if exp.shape != samp.displacements.shape or not np.allclose(exp, samp.displacements, rtol=0, atol=1e-9):
            raise SamplingError(ctx.label, f"the displacements given for T={cov.temperature:g} K (e.g. stored by a "
                                "sampling step) differ from those drawn from these settings and force "
                                "constants (seed, Φ⁰ or settings mismatch)")
    t1 = time.perf_counter()
    labels = [f"{ctx.label} T={cov.temperature:g}K {tag} #{k}" for k in range(s.n_configurations)]
    energies, forces, bad = _evaluate_forces(ctx, samp.supercells, labels)
    bad = bad + [b for b in _screen_outliers(ctx, energies, forces)
                 if b["configuration"] not in {x["configuration"] for x in bad}]
    if bad and not s.drop_outliers:
        desc = "; ".join(f"configuration {b['configuration']} ({labels[b['configuration']]}): {b['reason']}"
                         for b in bad[:3])
        raise UnphysicalForcesError(ctx.label,
                                    f"{len(bad)} outlier configuration(s) at T={cov.temperature:g} K: "
                                    f"{desc}. Set drop_outliers=True to drop and record them.")
    bad_idx = {b["configuration"] for b in bad}
    units = [u for u in _units(s.n_configurations, s.antithetic) if not (set(u) & bad_idx)]
    dropped = [dict(b, label=labels[b["configuration"]]) for b in bad]
    if s.antithetic:  # partners of dropped configurations go too (keeps the ± cancellation)
        for u in _units(s.n_configurations, True):
            for k in u:
                if set(u) & bad_idx and k not in bad_idx:
                    dropped.append({"configuration": k, "label": labels[k],
                                    "reason": "antithetic partner of a dropped configuration"})
    if len(units) < 1 or sum(len(u) for u in units) < 2:
        raise UnphysicalForcesError(ctx.label, f"too few usable configurations at T={cov.temperature:g} K "
                                    f"({len(dropped)} dropped of {s.n_configurations})")
    keep = [k for u in units for k in u]
    nb = max(1, min(n_blocks, len(units)))
    block_of = {k: b % nb for b, u in enumerate(units) for k in u}
    block_index = np.array([block_of[k] for k in keep])
    u_keep = samp.displacements[keep]
    f_keep = forces[keep]
    t2 = time.perf_counter()
    n_hess = 0
    sums = counts = model = None
    if s.estimator == "hessian":
        n3 = 3 * ctx.natom
        sums = np.zeros((nb, n3, n3))
        counts = np.zeros(nb)
        chunk = 8
        per_config: list[np.ndarray] | None = [] if s.reuse_samples else None
        for start in range(0, len(keep), chunk):
            idx = keep[start:start + chunk]
            h = np.asarray(ctx.potential.hessians([samp.supercells[k] for k in idx], delta=s.hessian_delta,
                                                  labels=[labels[k] for k in idx]), dtype=float)
            n_hess += len(idx)
            if not np.all(np.isfinite(h)):
                bad_k = [idx[j] for j in range(len(idx)) if not np.all(np.isfinite(h[j]))]
                raise UnphysicalForcesError(ctx.label, f"non-finite Hessian for configuration(s) {bad_k} at "
                                            f"T={cov.temperature:g} K")
            for j, k in enumerate(idx):
                sums[block_of[k]] += h[j]
                counts[block_of[k]] += 1
            if per_config is not None:
                per_config.append(h)
        t3 = time.perf_counter()
        fc = ctx.projector.project(matrix_to_fc(sums.sum(axis=0) / counts.sum())) if fit else None
    elif not fit:
        t3 = time.perf_counter()
        fc = None
    elif s.estimator == "quartic_fit":
        t3 = time.perf_counter()
        fc, model = ctx.quartic_estimate(u_keep, f_keep, cov.matrix)
    else:
        t3 = time.perf_counter()
        if not np.any(u_keep):
            raise SamplingError(ctx.label,
                                f"all displacements are zero at T={cov.temperature:g} K (classical 0 K or "
                                "every mode excluded): the force fit is undefined; use estimator='hessian'")
        fc = ctx.projector.fit(u_keep, f_keep)
    t4 = time.perf_counter()
    timings = {"sampling": t1 - t0, "model": (t2 - t1) + (t3 - t2 if s.estimator == "hessian" else 0.0),
               "estimator": (t4 - t3)}
    mind = float(np.min(samp.min_distances[keep])) if len(keep) else float("nan")
    hess = np.concatenate(per_config) if s.estimator == "hessian" and per_config else None
    return _Estimate(fc, sums, counts, block_index, u_keep, f_keep, dropped, n_hess, samp.n_clipped_atoms,
                     mind, timings, hess, model=model, covariance=None if model is None else cov.matrix)


def _block_estimates(ctx: _Context, est: _Estimate, finish=None) -> list[np.ndarray]:
    """Estimates from disjoint blocks of the configurations (batch means); [] if not possible.

    ``finish`` (quartic_fit): maps a block's fitted model to the returned quantity (its fixed point;
    ``None`` drops the block) instead of ⟨H⟩ at the block's Σ.
    """
    nb = int(est.block_index.max()) + 1 if est.block_index.size else 0
    if nb < 2:
        return []
    if est.block_sums is not None and est.block_counts is not None:
        return [ctx.projector.project(matrix_to_fc(est.block_sums[b] / est.block_counts[b]))
                for b in range(nb)]
    blocks = []
    sw = np.ones(len(est.displacements)) if est.weights is None else np.sqrt(est.weights)
    quartic = est.model is not None  # one fit per block of ± pairs: 3N equations per pair, not per configuration
    n_params = ctx.quartic_fitter.n_parameters if quartic else ctx.projector.n_basis
    for b in range(nb):
        sel = est.block_index == b
        if 3 * ctx.natom * int(sel.sum()) < n_params * (2 if quartic else 1):  # the block does not determine it
            continue
        u, f = est.displacements[sel], est.forces[sel]
        if quartic:
            fc, model = ctx.quartic_estimate(u, f, est.covariance, None if est.weights is None else est.weights[sel])
            if finish is not None:
                fc = finish(model)
            if fc is not None:
                blocks.append(fc)
        else:
            w = sw[sel][:, None, None]
            blocks.append(ctx.projector.fit(u * w, f * w))
    return blocks if len(blocks) >= 2 else []


def _std_err(arrs: list[np.ndarray]) -> np.ndarray:
    a = np.asarray(arrs, dtype=float)
    if len(a) < 2:
        return np.full(a.shape[1:], np.nan)
    return a.std(axis=0, ddof=1) / np.sqrt(len(a))


# --------------------------------------------------------------------------------------------
# main entry points
# --------------------------------------------------------------------------------------------
def _context(phonon, potential, settings: TDPHSettings, label: str,
             projector: FCProjector | None) -> _Context:
    projector = projector or FCProjector.from_phonopy(phonon)
    fc0 = projector.project(full_force_constants(phonon))
    equivalent = np.asarray(phonon.symmetry.get_map_atoms())
    return _Context(phonon, potential, label, settings, projector, fc0, supercell_to_ase(phonon.supercell),
                    len(phonon.supercell), equivalent)


def initial_samples(phonon, temperature: float, settings: TDPHSettings, label: str, *,
                    projector: FCProjector | None = None, _ctx: _Context | None = None) -> SamplingResult:
    """The configurations of the first estimate at ``temperature``: drawn from Σ(T; Φ⁰).

    Exactly those :func:`renormalize` draws first (same symmetrised Φ⁰, same derived seed), so a
    workflow can sample in one step (failing early on unphysical displacements) and evaluate the
    model in the next, passing them back through ``initial_displacements``. They are all the
    configurations of a one-shot run without extra error seeds.
    """
    ctx = _ctx or _context(phonon, None, settings, label, projector)
    modes0 = normal_modes(phonon.supercell, ctx.fc0, phonon.primitive, method=settings.mode_method)
    cov = thermal_covariance(modes0, temperature, settings.quantum, settings.policy)
    return _draw(ctx, cov, derive_seed(settings.seed, _temperature_key(temperature), 0, 0))


def renormalize_temperature(
    phonon,
    potential,
    temperature: float,
    settings: TDPHSettings,
    label: str,
    *,
    start_force_constants: np.ndarray | None = None,
    qpoints: Mapping[str, Sequence[float]] | None = None,
    projector: FCProjector | None = None,
    initial_displacements: np.ndarray | None = None,
    _ctx: _Context | None = None,
    _symmetry: dict | None = None,
) -> RenormalizationResult:
    """Φ(T) at one temperature (see :func:`renormalize`).

    ``start_force_constants`` is the initial Φ of a self-consistent run (warm start); Σ of a
    one-shot run is always built from the symmetrised harmonic Φ⁰ (``phonon.force_constants``).
    ``initial_displacements`` (from :func:`initial_samples`) are checked against the first draw
    from Σ(Φ⁰); a mismatch raises :class:`SamplingError`.
    """
    s = settings
    t_start = time.perf_counter()
    ctx = _ctx or _context(phonon, potential, s, label, projector)
    sym = _symmetry if _symmetry is not None else structure_symmetry(phonon, s.loose_symprec)
    calls0 = int(getattr(potential, "force_calls", 0))
    hcalls0 = getattr(potential, "hessian_calls", None)
    sc, prim = phonon.supercell, phonon.primitive
    qpts, f0 = commensurate_frequencies(sc, prim, ctx.fc0)
    modes0 = normal_modes(sc, ctx.fc0, prim, method=s.mode_method)
    report0 = thermal_covariance(modes0, temperature, s.quantum, s.policy).report
    tkey = _temperature_key(temperature)
    fc_in = ctx.fc0 if (start_force_constants is None or not s.self_consistent) else \
        ctx.projector.project(np.asarray(start_force_constants, dtype=float))
    history: list[dict] = []
    seeds: list[int] = []
    dropped_all: list[dict] = []
    n_hess = 0
    tim = {"sampling": 0.0, "model": 0.0, "estimator": 0.0}
    n_iter = s.max_iterations if s.self_consistent else 1
    n_blocks = s.n_blocks_for_error if s.n_seeds_for_error < 2 else 1
    converged: bool | None = None if not s.self_consistent else False
    est = cur = None
    cov = None
    reuse = s.reuse_samples and s.self_consistent
    pool: list[_Ensemble] = []
    alpha, prev_step = s.mixing, None
    noise_blocks: tuple[_Estimate, list[np.ndarray]] | None = None  # the noise stop's last block estimates
    for it in range(n_iter):
        modes = modes0 if fc_in is ctx.fc0 else normal_modes(sc, fc_in, prim, method=s.mode_method)
        cov = thermal_covariance(modes, temperature, s.quantum, s.policy)
        seed = derive_seed(s.seed, tkey, it, 0)
        seeds.append(seed)
        expected = initial_displacements if (it == 0 and fc_in is ctx.fc0) else None
        # with reuse only the pooled estimate is used: this ensemble's own fit would be thrown away
        cur = _estimate(ctx, cov, seed, f"it{it}", n_blocks, expected, fit=not reuse)
        n_hess += cur.n_hessians
        dropped_all += [dict(d, iteration=it) for d in cur.dropped]
        for k in tim:
            tim[k] += cur.timings[k]
        est = cur
        if reuse:
            t_pool = time.perf_counter()
            pool.append(_Ensemble.from_estimate(cur, cov, it, s.antithetic))
            est = _pooled_estimate(ctx, pool, n_blocks)
            tim["estimator"] += time.perf_counter() - t_pool
        _, f_in = commensurate_frequencies(sc, prim, fc_in)
        _, f_out = commensurate_frequencies(sc, prim, est.fc)
        residual = float(np.max(np.abs(f_out - f_in)))
        history.append({
            "iteration": it, "seed": seed, "residual_thz": residual,
            "min_frequency_in_thz": float(cov.report.min_frequency_thz),
            "min_frequency_out_thz": float(np.min(f_out[~_gamma_acoustic_mask(qpts, f_out)])),
            "n_imaginary_in": cov.report.n_imaginary, "n_affected_in": cov.report.n_affected,
            "rms_displacement": float(np.sqrt(np.trace(cov.matrix) / ctx.natom)),
            "n_dropped": len(cur.dropped), "n_clipped_atoms": cur.n_clipped,
            "min_distance": cur.min_distance, "timings": dict(cur.timings),
        })
        if est.pool is not None:
            history[-1]["pool"] = est.pool
        if est.model is not None:
            history[-1]["quartic_model"] = est.model.to_dict()
        if not s.self_consistent:
            break
        if residual < s.tol_thz:
            converged = True
            break
        if s.noise_tol > 0 and it > 0:  # the first residual measures the distance from Φ⁰, not noise
            blocks = _block_estimates(ctx, est)
            if blocks:  # each mode's change against its own standard error (acoustic Γ modes left out)
                ferr = _std_err([commensurate_frequencies(sc, prim, b)[1] for b in blocks])
                keep = ~_gamma_acoustic_mask(qpts, f_out)
                z = float(np.max(np.abs(f_out - f_in)[keep] / np.maximum(ferr[keep], 1e-9)))
                err = float(np.max(ferr[keep]))
                history[-1].update(frequency_error_thz=err, residual_sigmas=z)
                noise_blocks = (est, blocks)
                if z < s.noise_tol and err > s.target_error_thz > 0:
                    history[-1]["above_target_error"] = True  # on the fixed point: sample on, the pool grows
                elif z < s.noise_tol:
                    converged = True
                    history[-1]["converged_on"] = "noise"
                    break
        if it < n_iter - 1:
            # quartic_fit: jump to the fixed point of the fitted model (no force calls) when it has one
            jump = _model_fixed_point(ctx, est.model, fc_in, temperature, history[-1]) if est.model else None
            if jump is not None:
                fc_in = jump
            else:
                if s.adaptive_mixing:
                    step = ((est.fc - fc_in) / ctx.mass_weight).ravel()  # the undamped update
                    if prev_step is not None:
                        alpha, history[-1]["step_ratio"] = adapt_mixing(alpha, step, prev_step, residual,
                                                                         history[-2]["residual_thz"], s.min_mixing)
                    prev_step = step
                history[-1]["mixing"] = alpha
                fc_in = (1.0 - alpha) * fc_in + alpha * est.fc
    assert est is not None and cur is not None and cov is not None
    if s.self_consistent and not converged:
        warnings.warn(f"[{label}] self-consistent renormalisation at T={temperature:g} K did not converge in "
                      f"{n_iter} iterations (last residual {history[-1]['residual_thz']:.3g} THz > "
                      f"{s.tol_thz:g} THz" + (f"; on the noise floor, but the frequency error "
                                              f"{history[-1]['frequency_error_thz']:.3g} THz > target "
                                              f"{s.target_error_thz:g} THz" if history[-1].get("above_target_error")
                                              else "") + ")", stacklevel=2)
    # final estimate(s) at the last Σ
    estimates = [est]
    sampled = [cur]  # configurations drawn from the final Σ (σᴬ)
    last_it = history[-1]["iteration"]
    for j in range(1, s.n_seeds_for_error):
        seed = derive_seed(s.seed, tkey, last_it, j)
        seeds.append(seed)
        e = _estimate(ctx, cov, seed, f"it{last_it}s{j}", 1, fit=not reuse)
        n_hess += e.n_hessians
        dropped_all += [dict(d, iteration=last_it, seed_index=j) for d in e.dropped]
        for k in tim:
            tim[k] += e.timings[k]
        sampled.append(e)
        if reuse:  # more configurations at the final Σ join the pool; errors from its batch means
            pool.append(_Ensemble.from_estimate(e, cov, last_it, s.antithetic))
        else:
            estimates.append(e)
    if reuse and len(sampled) > 1:
        est = _pooled_estimate(ctx, pool, s.n_blocks_for_error)
        estimates = [est]
        history[-1]["pool_final"] = est.pool
    outputs = [e.fc for e in estimates]
    finish = None
    t_out = time.perf_counter()
    if s.self_consistent and est.model is not None and s.quartic_output == "fixed_point":
        # the fixed point of each final fitted model (warm-started from the Φ the last Σ came from)
        out_rec: dict[str, Any] = {"kind": "estimate", "model_scph": []}
        history[-1]["output"] = out_rec
        tol_out = max(1e-6, min(1e-4, 0.01 * s.tol_thz))  # the output: well below the run's tolerance
        fps = [_model_fixed_point(ctx, e.model, fc_in, temperature, out_rec, tol_out) for e in estimates]
        if all(fp is not None for fp in fps):
            outputs = fps
            out_rec["kind"] = "model_fixed_point"
            start = np.mean(fps, axis=0)

            def finish(model) -> np.ndarray | None:  # batch means: the fixed point of each block's model
                return _model_fixed_point(ctx, model, start, temperature, out_rec, tol_out)
        else:
            out_rec["reason"] = "the SCPH iteration of a final fitted model did not converge"
            warnings.warn(f"[{label}] T={temperature:g} K: the fixed point of the final quartic model did not "
                          "converge; returning ⟨H⟩ at the last Σ instead", stacklevel=2)
    fc_t = np.mean(outputs, axis=0)
    if len(outputs) >= 2:
        members, method = outputs, "independent seeds"
    elif len(blocks := (noise_blocks[1] if finish is None and noise_blocks and noise_blocks[0] is est
                        else _block_estimates(ctx, est, finish))) >= 2:
        members, method = blocks, f"batch means ({len(blocks)} blocks)"
    else:
        members, method = [], "none"
    tim["estimator"] += time.perf_counter() - t_out
    _, f_t = commensurate_frequencies(sc, prim, fc_t)
    t_metrics = time.perf_counter()
    metrics = _metrics(ctx, fc_t, f_t, f0, qpts, sampled)
    member_freqs = [commensurate_frequencies(sc, prim, m)[1] for m in members]
    if members:
        m_rf = [r_full(m, ctx.fc0) for m in members]
        m_ro = [onsite_report(m, ctx.fc0, sc, equivalent=ctx.equivalent).maximum for m in members]
        m_fs = [frequency_shift(fm, f0, qpts) for fm in member_freqs]
        errors = {"method": method, "n_estimates": len(members),
                  "r_full": float(np.std(m_rf, ddof=1) / np.sqrt(len(members))),
                  "r_onsite_max": float(np.std(m_ro, ddof=1) / np.sqrt(len(members))),
                  "frequency_shift": float(np.std(m_fs, ddof=1) / np.sqrt(len(members))),
                  "max_frequency_error_thz": float(np.max(_std_err(member_freqs)))}
        metrics["r_full_noise_floor"] = r_full_noise_floor(members[0], members[1], ctx.fc0)
        metrics["r_full_noise_floor_note"] = ("R_full between two independent estimates of "
                                              + ("full size" if len(estimates) >= 2 else "one block"))
        fc_err = _std_err(members)
        freq_err = _std_err(member_freqs)
    else:
        errors = {"method": method, "n_estimates": 1}
        fc_err = np.full(fc_t.shape, np.nan)
        freq_err = np.full(f_t.shape, np.nan)
    tim["metrics"] = time.perf_counter() - t_metrics
    named, named0 = {}, {}
    if qpoints:
        ph_t = phonopy_with_force_constants(phonon, fc_t)
        ph_0 = phonopy_with_force_constants(phonon, ctx.fc0)
        for name, q in qpoints.items():
            named[name] = _frequencies_at(ph_t, q)
            named0[name] = _frequencies_at(ph_0, q)
    tim["total"] = time.perf_counter() - t_start
    settings_d = s.to_dict()
    settings_d["digest"] = s.digest()
    settings_d["model"] = potential.identity.to_dict() if hasattr(potential, "identity") else None
    settings_d["projector"] = {"n_basis": ctx.projector.n_basis, "n_operations": ctx.projector.n_operations}
    mode_report = {"harmonic": report0.to_dict(), "final": cov.report.to_dict(),
                   # modes of the Φ that the final Σ was built from were treated by the policy: Φ(T)
                   # (and, self-consistently, which fixed point is reached) depends on that choice
                   "policy_dependent": bool(cov.report.n_affected > 0),
                   # a converged self-consistent Φ(T) with imaginary modes cannot be a SCHA solution (its Σ
                   # needs real frequencies): it is a fixed point of the policy that sampled them with |ν|
                   "imaginary_fixed_point": (bool(converged and cov.report.n_imaginary > 0)
                                             if s.self_consistent else None)}
    if mode_report["imaginary_fixed_point"]:
        warnings.warn(f"[{label}] the self-consistent Φ({temperature:g} K) converged with {cov.report.n_imaginary} "
                      f"imaginary mode(s) (lowest {cov.report.min_frequency_thz:.3g} THz): a fixed point of the "
                      f"'{s.policy.kind}' policy, not a SCHA solution: either the model has no stable SCHA state "
                      "at this temperature, or its self-consistent frequencies lie below the policy threshold "
                      f"({s.policy.threshold_thz:g} THz), where Σ no longer follows them (a lower threshold can "
                      "tell)", stacklevel=2)
    if mode_report["policy_dependent"]:
        warnings.warn(f"[{label}] Φ({temperature:g} K) was estimated from a covariance in which "
                      f"{cov.report.n_affected} mode(s) ({cov.report.n_imaginary} imaginary) were set by the "
                      f"'{s.policy.kind}' policy (threshold {s.policy.threshold_thz:g} THz): the result depends "
                      "on that policy", stacklevel=2)
    force_calls = int(getattr(potential, "force_calls", 0)) - calls0
    hessian_calls = int(potential.hessian_calls) - int(hcalls0) if hcalls0 is not None else n_hess
    return RenormalizationResult(
        label=label, temperature=float(temperature), force_constants=fc_t, harmonic_force_constants=ctx.fc0,
        qpoints=qpts, frequencies=f_t, harmonic_frequencies=f0, frequency_error=freq_err,
        force_constants_error=fc_err, named_frequencies=named, named_harmonic_frequencies=named0,
        converged=converged, history=tuple(history), force_calls=force_calls, hessian_calls=hessian_calls,
        seeds=tuple(seeds), settings=settings_d, timings=tim, errors=errors,
        metrics=metrics, mode_report=mode_report, outliers=tuple(dropped_all), symmetry=sym)


def adapt_mixing(alpha: float, step: np.ndarray, prev_step: np.ndarray, residual: float, prev_residual: float,
                 min_mixing: float) -> tuple[float, float]:
    """The next mixing α of a self-consistent run (``adaptive_mixing``) and the step ratio ρ.

    ``step`` and ``prev_step`` are the undamped updates d_k = ⟨H⟩_{Σ(Φ_k)} − Φ_k (mass-weighted
    force constants) of this and the previous iteration; ρ = ⟨d_k, d_{k−1}⟩/|d_{k−1}|². For a map of
    slope g along d, mixing with α gives d_k ≈ (1 − α(1 − g)) d_{k−1}: an update that reversed (ρ < 0)
    while the residual grew is the period-2 overshoot of a slope g < 1 − 2/α, and α is halved (not
    below ``min_mixing``). Both conditions are required so that the sampling noise near the fixed
    point, which flips one of them at random, rarely slows a converging run; α is never raised again
    (within one temperature).
    """
    norm2 = float(prev_step @ prev_step)
    rho = float(step @ prev_step) / norm2 if norm2 > 0 else 0.0
    if rho < 0.0 and residual > prev_residual:
        alpha = max(0.5 * alpha, min_mixing)
    return alpha, rho


def _model_fixed_point(ctx: _Context, model, fc_in: np.ndarray, temperature: float,
                       record: dict, tol_thz: float | None = None) -> np.ndarray | None:
    """SCPH fixed point Φ = Φ₂ + ½Φ₄:Σ(Φ) of a fitted quartic model, started from ``fc_in``.

    ``None`` when the model's own iteration does not converge (e.g. a fitted Φ₄ that destabilises a
    soft mode): the caller then takes the mixed update (or, for the output, the estimate);
    ``record["model_scph"]`` notes the solve (appended to when it is a list). ``tol_thz`` of the
    SCPH iteration: default min(1e-3, 0.1 × settings.tol_thz) (enough for a jump).
    """
    from tdphonon.validation.scph import scph

    s = ctx.settings
    ph = ctx.phonon
    t0 = time.perf_counter()
    r = scph(ph.supercell, ph.primitive, model.fc2, model.quartic, temperature, mixing=s.mixing,
             tol_thz=tol_thz or min(1e-3, 0.1 * s.tol_thz), max_iterations=500, quantum=s.quantum,
             projector=ctx.projector, policy=s.policy, initial=fc_in,
             adaptive_mixing=s.adaptive_mixing, min_mixing=s.min_mixing)
    info = {"converged": r.converged, "n_iterations": r.n_iterations, "seconds": time.perf_counter() - t0}
    if isinstance(record.get("model_scph"), list):
        record["model_scph"].append(info)
    else:
        record["model_scph"] = info
    return r.force_constants if r.converged else None


def _gamma_acoustic_mask(qpts: np.ndarray, freqs: np.ndarray) -> np.ndarray:
    mask = np.zeros(freqs.shape, dtype=bool)
    for k, q in enumerate(qpts):
        if np.allclose(q, np.rint(q)):
            mask[k, np.argsort(np.abs(freqs[k]))[:3]] = True
    return mask


def _frequencies_at(ph, q: Sequence[float]) -> np.ndarray:
    ph.run_qpoints([list(map(float, q))])
    return np.asarray(ph.qpoints.frequencies[0], dtype=float)


def _metrics(ctx: _Context, fc_t: np.ndarray, f_t: np.ndarray, f0: np.ndarray, qpts: np.ndarray,
             estimates: list[_Estimate]) -> dict[str, Any]:
    u = np.concatenate([e.displacements for e in estimates])
    f = np.concatenate([e.forces for e in estimates])
    ons = onsite_report(fc_t, ctx.fc0, ctx.phonon.supercell, equivalent=ctx.equivalent)
    sym_res = float(np.max(np.abs(ctx.projector.project(fc_t) - fc_t)))
    return {
        "r_full": r_full(fc_t, ctx.fc0),
        "r_full_rel_threshold": DEFAULT_REL_THRESHOLD,
        "r_onsite": ons.to_dict(),
        "r_onsite_max": ons.maximum,
        "frequency_shift": frequency_shift(f_t, f0, qpts),
        "frequency_shift_qpoints": "commensurate q-points of the supercell, Γ acoustic modes excluded",
        "anharmonicity": anharmonicity_score(u, f, ctx.fc0),
        "symmetry_residual": sym_res,
        "acoustic_sum_rule_residual": float(np.max(np.abs(fc_t.sum(axis=1)))),
    }


def renormalize(
    phonon,
    potential,
    temperatures: Sequence[float],
    settings: TDPHSettings,
    label: str,
    *,
    qpoints: Mapping[str, Sequence[float]] | None = None,
    projector: FCProjector | None = None,
    initial_displacements: Mapping[float, np.ndarray] | None = None,
) -> list[RenormalizationResult]:
    """Temperature-renormalised force constants Φ(T) of one material.

    Parameters
    ----------
    phonon
        :class:`phonopy.Phonopy` with the *model's* harmonic force constants Φ⁰ (full or compact);
        its supercell defines the sampling cell and the atom order of all outputs.
    potential
        :class:`tdphonon.potentials.Potential` (``energies_and_forces``, ``hessians``, ``force_calls``).
    temperatures
        K. Computed from high to low (warm starts for self-consistent runs); returned in the given
        order.
    settings
        :class:`TDPHSettings`.
    label
        Material name (used in every error and configuration label).
    qpoints
        Optional named q-points (reduced coordinates of the primitive reciprocal lattice) at which
        frequencies of Φ(T) and Φ⁰ are reported.
    projector
        Reuse a :class:`~tdphonon.sampling.FCProjector` of ``phonon`` (built if not given).
    initial_displacements
        Optional ``{temperature: (n, N, 3) displacements}`` from :func:`initial_samples` (e.g. a
        stored sampling step); each is verified against the first draw at that temperature.

    Returns
    -------
    list[RenormalizationResult]
        One per temperature, in the order of ``temperatures``.

    Raises
    ------
    SamplingError
        Unphysical displacements (cap with ``cap_mode="raise"``, too close atoms).
    UnphysicalForcesError
        Outlier configurations without ``drop_outliers`` (or too few usable ones).
    RelaxationError
        With ``symmetry_loss="raise"``, a structure close to a higher symmetry.
    """
    temps = [float(t) for t in temperatures]
    if not temps:
        return []
    if any(t < 0 or not np.isfinite(t) for t in temps):
        raise TDPhononError(label, f"temperatures must be finite and ≥ 0, got {temps}")
    sym = structure_symmetry(phonon, settings.loose_symprec)
    if sym["near_higher_symmetry"]:
        msg = (f"structure has space group {sym['spacegroup']} at symprec {sym['symprec']:g} but "
               f"{sym['spacegroup_loose']} at {sym['loose_symprec']:g}: it lost symmetry "
               "(e.g. in relaxation); "
               "its force constants are only projected onto the lower symmetry")
        if settings.symmetry_loss == "raise":
            raise RelaxationError(label, msg)
        warnings.warn(f"[{label}] {msg}", stacklevel=2)
    ctx = _context(phonon, potential, settings, label, projector)
    order = sorted(range(len(temps)), key=lambda i: -temps[i])
    results: dict[int, RenormalizationResult] = {}
    start = None
    for i in order:
        given = None
        if initial_displacements is not None:
            given = next((v for t, v in initial_displacements.items()
                          if _temperature_key(float(t)) == _temperature_key(temps[i])), None)
        res = renormalize_temperature(phonon, potential, temps[i], settings, label,
                                      start_force_constants=start, qpoints=qpoints, initial_displacements=given,
                                      _ctx=ctx, _symmetry=sym)
        results[i] = res
        if settings.self_consistent and settings.warm_start:
            start = res.force_constants
    return [results[i] for i in range(len(temps))]
