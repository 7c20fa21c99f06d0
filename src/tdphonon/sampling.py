"""Thermal displacement covariance Σ(T) and displacement sampling of a supercell.

Everything here works on the supercell normal modes s (supercell Γ modes) of a force-constant set
Φ (phonopy full format (N, N, 3, 3), eV/Å², phonopy's supercell atom order):

    D = M^{-1/2} Φ M^{-1/2} = W diag(ω_s²) Wᵀ                    (W real, orthonormal columns)
    Σ = M^{-1/2} W diag(σ_s²) Wᵀ M^{-1/2}                          (physics.md Eq. 2)
    σ_s² = ħ coth(ħω_s / 2k_BT) / (2ω_s)   (quantum),   k_BT / ω_s²   (classical)

In phonopy units (eV, Å, amu) an eigenvalue λ_s = ω_s² of D is in eV/(Å² amu), so
σ_s² = (ε_s/2) coth(ε_s/2k_BT) / λ_s amu·Å² with ε_s = ħω_s in eV; the classical limit of the
numerator is k_BT, the T → 0 limit is ε_s/2 (zero-point motion).

The modes are built either from the commensurate q-points of the supercell (per-q dynamical
matrices of the primitive cell, as phonopy's ``RandomDisplacements``; default, cheap for large
cells) or by diagonalising the 3N×3N supercell dynamical matrix directly; both give the same
Σ (tested). The three uniform translations are removed *exactly*: the dynamical matrix is
restricted to the orthogonal complement of the mass-weighted translations √m_i e_α before it is
diagonalised (so they are identified by projection, not by their frequency) and they always get
zero amplitude. The acoustic sum rule (and the space group and index permutation symmetry) is
imposed on Φ by the symfc projector (:class:`FCProjector`) before the modes are built.

Imaginary and near-zero modes follow an explicit, recorded :class:`ModeAmplitudePolicy`.

Units: Å, eV, amu, THz (imaginary frequencies as negative numbers), K.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from ase import Atoms
from phonopy.physical_units import get_physical_units

from tdphonon.errors import SamplingError, TDPhononError

__all__ = [
    "FCProjector",
    "ModeAmplitudePolicy",
    "ModeReport",
    "NormalModes",
    "SamplingResult",
    "ThermalCovariance",
    "canonical_order",
    "commensurate_frequencies",
    "commensurate_qpoints",
    "derive_seed",
    "eigh_without_translations",
    "fc_mass_weight",
    "fc_to_matrix",
    "full_force_constants",
    "matrix_to_fc",
    "minimum_distances",
    "mode_amplitudes",
    "normal_modes",
    "sample_displacements",
    "signed_thz",
    "supercell_to_ase",
    "thermal_covariance",
    "thermal_samples",
]

_UNITS = get_physical_units()
#: THz per sqrt(eV/(Å² amu)) (phonopy's VaspToTHz)
TO_THZ: float = float(_UNITS.DefaultToTHz)
#: eV per THz (h·1 THz)
THZ_TO_EV: float = float(_UNITS.THzToEv)
#: Boltzmann constant in eV/K
KB_EV: float = float(_UNITS.KB)

SamplingKind = Literal["gaussian", "fixed_amplitude"]
ModeMethod = Literal["commensurate", "supercell"]
CapMode = Literal["raise", "clip"]


# --------------------------------------------------------------------------------------------
# array helpers
# --------------------------------------------------------------------------------------------
def fc_to_matrix(fc: np.ndarray) -> np.ndarray:
    """(N, N, 3, 3) force constants → (3N, 3N) matrix with index 3i+a."""
    fc = np.asarray(fc, dtype=float)
    n = fc.shape[0]
    return fc.transpose(0, 2, 1, 3).reshape(3 * n, 3 * n)


def fc_mass_weight(supercell) -> np.ndarray:
    """√(m_i m_j) (amu) of a supercell's atoms in the (N, N, 1, 1) layout of the force constants."""
    m = np.asarray(supercell.masses, dtype=float)
    return np.sqrt(np.outer(m, m))[:, :, None, None]


def matrix_to_fc(mat: np.ndarray) -> np.ndarray:
    """(3N, 3N) matrix with index 3i+a → (N, N, 3, 3) force constants (inverse of :func:`fc_to_matrix`)."""
    mat = np.asarray(mat, dtype=float)
    n = mat.shape[0] // 3
    return np.ascontiguousarray(mat.reshape(n, 3, n, 3).transpose(0, 2, 1, 3))


def full_force_constants(phonon) -> np.ndarray:
    """Full (N, N, 3, 3) force constants of a :class:`phonopy.Phonopy` (compact ones are expanded)."""
    from phonopy.harmonic.force_constants import compact_fc_to_full_fc

    fc = phonon.force_constants
    if fc is None:
        raise ValueError("the phonopy object has no force constants")
    fc = np.asarray(fc, dtype=float)
    if fc.shape[0] != fc.shape[1]:
        fc = compact_fc_to_full_fc(phonon.primitive, fc)
    return np.array(fc, dtype=float, order="C")


def supercell_to_ase(supercell, displacements: np.ndarray | None = None) -> Atoms:
    """ASE ``Atoms`` of a phonopy supercell, optionally displaced by ``displacements`` (N, 3) Å."""
    pos = np.asarray(supercell.positions, dtype=float)
    if displacements is not None:
        pos = pos + np.asarray(displacements, dtype=float)
    return Atoms(symbols=list(supercell.symbols), cell=np.asarray(supercell.cell), positions=pos, pbc=True,
                 masses=np.asarray(supercell.masses, dtype=float))


def derive_seed(base_seed: int, *keys: int) -> int:
    """Deterministic 32-bit seed derived from ``base_seed`` and integer keys (``SeedSequence``)."""
    entropy = [int(base_seed) & 0xFFFFFFFFFFFFFFFF, *(int(k) & 0xFFFFFFFFFFFFFFFF for k in keys)]
    return int(np.random.SeedSequence(entropy).generate_state(1, dtype=np.uint32)[0])


# --------------------------------------------------------------------------------------------
# symmetry projection (space group + translations + permutation + acoustic sum rule)
# --------------------------------------------------------------------------------------------
class FCProjector:
    """Orthogonal projector onto the symmetric subspace of supercell force constants (symfc).

    The subspace is spanned by symfc's second-order basis: space-group invariance, lattice
    translations, index permutation (Φ_ij = Φ_jiᵀ) and the acoustic sum rule Σ_j Φ_ij = 0, imposed
    simultaneously. ``P = C B Bᵀ Cᵀ`` (C: compression matrix, B: blocked basis, both with
    orthonormal columns), as in ``phonopy.Phonopy.symmetrize_force_constants(use_symfc_projector=True)``,
    but the basis is built once and reused, and it also fits force constants to forces.

    Parameters
    ----------
    supercell
        Phonopy supercell (``phonon.supercell``).
    symmetry
        Phonopy ``Symmetry`` of that supercell (``phonon.symmetry``) so that the same tolerance is
        used; ``None`` lets symfc run spglib with its default tolerance.
    """

    def __init__(self, supercell, symmetry=None) -> None:
        from phonopy.interface.symfc import SymfcFCSolver

        self.natom = len(supercell)
        solver = SymfcFCSolver(supercell, symmetry=symmetry, log_level=0)
        self.basis = solver.compute_basis_set(orders=[2])[2]
        self._cmat = self.basis.compression_matrix.tocsc()
        self._blocked = self.basis.blocked_basis_set
        self.n_basis = int(self.basis.basis_set.shape[1]) if self.basis.basis_set is not None else 0
        ops = symmetry.symmetry_operations["rotations"] if symmetry is not None else None
        self.n_operations = len(ops) if ops is not None else -1

    @classmethod
    def from_phonopy(cls, phonon) -> FCProjector:
        """Projector for ``phonon.supercell`` with phonopy's supercell symmetry."""
        return cls(phonon.supercell, phonon.symmetry)

    def project(self, fc: np.ndarray) -> np.ndarray:
        """Return P·Φ for full force constants (N, N, 3, 3)."""
        fc = np.asarray(fc, dtype=float)
        if fc.shape != (self.natom, self.natom, 3, 3):
            shape = (self.natom, self.natom, 3, 3)
            raise ValueError(f"expected force constants of shape {shape}, got {fc.shape}")
        x = fc.ravel() @ self._cmat
        x = self._blocked.T @ x.T
        x = self._blocked @ x
        out = self._cmat @ x
        return np.array(np.asarray(out).reshape(fc.shape), dtype=float, order="C")

    def basis_matrix(self):
        """The orthonormal basis of the subspace as a sparse (9N², n_basis) matrix C·B.

        Column k flattened in phonopy's (N, N, 3, 3) order; :meth:`from_coefficients` inverts it.
        """
        import scipy.sparse as sp

        blocked = np.asarray(self._blocked @ np.eye(self.n_basis))
        return sp.csc_matrix(self._cmat @ sp.csc_matrix(blocked))

    def from_coefficients(self, coefficients: np.ndarray) -> np.ndarray:
        """Force constants (N, N, 3, 3) Σ_k c_k Φ_k in the basis of :meth:`basis_matrix`."""
        c = np.asarray(coefficients, dtype=float)
        x = self._cmat @ (self._blocked @ c)
        return np.array(np.asarray(x).reshape(self.natom, self.natom, 3, 3), dtype=float, order="C")

    def fit(self, displacements: np.ndarray, forces: np.ndarray) -> np.ndarray:
        """Least-squares force constants in the symmetric basis from (u, F) pairs (symfc solver).

        Minimises Σ_k |F_k + Φ u_k|² over Φ in the symmetric subspace; identical to phonopy's
        ``produce_force_constants(fc_calculator="symfc")`` on the dataset ``{displacements, forces}``.
        """
        from symfc.solvers.solver_O2 import FCSolverO2

        u = np.ascontiguousarray(displacements, dtype=float)
        f = np.ascontiguousarray(forces, dtype=float)
        solver = FCSolverO2(self.basis, log_level=0).solve(u, f)
        return np.array(solver.full_fc, dtype=float, order="C")


# --------------------------------------------------------------------------------------------
# policy for imaginary / near-zero modes
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ModeAmplitudePolicy:
    """How imaginary and near-zero harmonic modes are sampled (recorded with every result).

    A mode with signed frequency ν (THz, imaginary < 0) is *affected* when ν < ``threshold_thz``
    (every imaginary mode and every real mode below the threshold). The three uniform translations
    are never affected: they are removed exactly and always get zero amplitude.

    kind
        ``"abs"``: affected modes use |ν|, bounded below by ``threshold_thz`` so that near-zero modes
        stay finite (phonopy's choice for imaginary modes). ``"floor"``: every mode with
        ν < ``floor_thz`` (imaginary or real) uses ``floor_thz`` (QSCAILD-style); the threshold only
        decides which modes are flagged. ``"fixed_amplitude"``: affected modes get an rms
        displacement of ``amplitude`` Å, i.e. a mode-amplitude σ_s with
        Σ_i σ_s² |w_is|²/m_i = N·amplitude² (pypolymlp-style). ``"exclude"``: affected modes get zero
        amplitude (TDEP-style; such a mode cannot be renormalised in one shot).
    threshold_thz
        Near-zero threshold (default 0.5 THz, the flagging threshold of physics.md §3: below it
        Eq. 2 amplitudes diverge like 1/ν and an MLIP is pushed far from its training data).
    floor_thz
        Floor frequency of the ``floor`` policy (default 1 THz, as QSCAILD).
    amplitude
        rms displacement (Å) of the ``fixed_amplitude`` policy (default 0.05 Å).
    """

    kind: Literal["abs", "floor", "fixed_amplitude", "exclude"] = "abs"
    threshold_thz: float = 0.5
    floor_thz: float = 1.0
    amplitude: float = 0.05

    def __post_init__(self) -> None:
        if self.kind not in ("abs", "floor", "fixed_amplitude", "exclude"):
            raise ValueError(f"unknown mode-amplitude policy {self.kind!r}")
        if self.threshold_thz < 0 or self.floor_thz <= 0 or self.amplitude < 0:
            raise ValueError("policy thresholds must be non-negative and floor_thz positive")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModeAmplitudePolicy:
        return cls(**d)


# --------------------------------------------------------------------------------------------
# normal modes
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class NormalModes:
    """Real supercell normal modes (Γ modes of the supercell).

    Attributes
    ----------
    frequencies
        (3N,) signed frequencies in THz (imaginary negative); translations have exactly 0.
    eigenvalues
        (3N,) eigenvalues of the mass-weighted dynamical matrix, eV/(Å² amu).
    eigenvectors
        (3N, 3N) real orthonormal columns w_s in mass-weighted coordinates (index 3i+a).
    is_translation
        (3N,) True for the three uniform translations.
    masses
        (N,) atomic masses (amu).
    qpoint_index
        (3N,) index of the commensurate q-point a mode belongs to (−1 for the supercell method).
    qpoints
        Commensurate q-points (reduced coordinates of the primitive reciprocal lattice), or None.
    method
        ``"commensurate"`` or ``"supercell"``.
    """

    frequencies: np.ndarray
    eigenvalues: np.ndarray
    eigenvectors: np.ndarray
    is_translation: np.ndarray
    masses: np.ndarray
    qpoint_index: np.ndarray
    qpoints: np.ndarray | None
    method: str

    @property
    def natom(self) -> int:
        return len(self.masses)

    def displacement_patterns(self) -> np.ndarray:
        """(3N, 3N) columns M^{-1/2} w_s (Cartesian displacement per unit mode amplitude, Å/√amu)."""
        return self.eigenvectors / np.sqrt(np.repeat(self.masses, 3))[:, None]

    def mode_coordinates(self, displacements: np.ndarray) -> np.ndarray:
        """Mode amplitudes Q_s = w_sᵀ M^{1/2} u of displacements (..., N, 3) → (..., 3N)."""
        u = np.asarray(displacements, dtype=float)
        flat = u.reshape(*u.shape[:-2], 3 * self.natom) * np.sqrt(np.repeat(self.masses, 3))
        return flat @ self.eigenvectors


def _translation_basis(masses: np.ndarray) -> np.ndarray:
    """(3n, 3) orthonormal mass-weighted uniform translations √m_i e_α / √Σm."""
    n = len(masses)
    t = np.zeros((3 * n, 3))
    sq = np.sqrt(masses)
    for a in range(3):
        t[a::3, a] = sq
    return t / np.sqrt(masses.sum())


def signed_thz(eigvals: np.ndarray) -> np.ndarray:
    """Signed frequencies (THz; imaginary as negative) of mass-weighted eigenvalues in eV/(Å² amu)."""
    return np.sign(eigvals) * np.sqrt(np.abs(eigvals)) * TO_THZ


def eigh_without_translations(dm: np.ndarray,
                               masses: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Diagonalise a real symmetric mass-weighted matrix on the complement of the translations.

    Returns eigenvalues, eigenvectors (columns) and the translation mask; the three translations
    come first with eigenvalue 0.
    """
    t = _translation_basis(masses)
    p = np.eye(len(dm)) - t @ t.T
    dp = p @ dm @ p
    # the translations span an invariant subspace of P D P; lift them above the spectrum so that
    # they separate exactly from (possibly zero-frequency) physical modes
    kappa = 2.0 * np.linalg.norm(dp) + 1.0
    w, v = np.linalg.eigh(0.5 * (dp + dp.T) + kappa * (t @ t.T))
    w, v = w[:-3], v[:, :-3]
    v = v - t @ (t.T @ v)
    v /= np.linalg.norm(v, axis=0)
    vecs = np.hstack([t, v])
    vals = np.concatenate([np.zeros(3), w])
    mask = np.zeros(len(vals), dtype=bool)
    mask[:3] = True
    return vals, vecs, mask


def commensurate_qpoints(supercell, primitive) -> tuple[np.ndarray, list[int], list[int]]:
    """Commensurate q-points of the supercell (primitive reciprocal reduced coordinates).

    Returns
    -------
    qpoints, ii, ij
        All N_L points; indices of those with q ≡ −q (``ii``) and one of each ±q pair (``ij``).
    """
    from phonopy.harmonic.dynmat_to_fc import (
        categorize_commensurate_points,
        get_commensurate_points_in_integers,
    )

    smat = np.rint(np.asarray(supercell.cell) @ np.linalg.inv(np.asarray(primitive.cell))).T.astype(int)
    comm = get_commensurate_points_in_integers(smat)
    ii, ij = categorize_commensurate_points(comm)
    return comm / float(len(comm)), list(ii), list(ij)


class _BlochData:
    """Supercell ↔ primitive bookkeeping for dynamical matrices at commensurate q."""

    def __init__(self, supercell, primitive) -> None:
        self.n = len(supercell)
        s2p = np.asarray(primitive.s2p_map)
        p2p = primitive.p2p_map
        self.pidx = np.array([p2p[int(s)] for s in s2p])  # primitive index of each supercell atom
        self.rep = np.asarray(primitive.p2s_map)  # supercell index of each primitive atom
        self.np = len(self.rep)
        tmat = np.asarray(supercell.cell) @ np.linalg.inv(np.asarray(primitive.cell))
        spos = np.asarray(supercell.scaled_positions) @ tmat  # primitive reduced coordinates
        # lattice vector of each atom relative to its primitive representative
        self.lattice = spos - spos[self.rep][self.pidx]
        self.masses = np.asarray(supercell.masses, dtype=float)
        self.onehot = np.zeros((self.n, self.np))
        self.onehot[np.arange(self.n), self.pidx] = 1.0
        self.n_cells = self.n // self.np

    def dynmat(self, fc: np.ndarray, q: np.ndarray) -> np.ndarray:
        """D-type dynamical matrix (phase with lattice vectors only), (3n_p, 3n_p) Hermitian."""
        rows = fc[self.rep]  # (np, N, 3, 3)
        phase = np.exp(2j * np.pi * (self.lattice @ q))  # (N,)
        # relative lattice vector between representative k (at its own cell, R=0) and atom j
        d = np.einsum("kjab,j,jK->kaKb", rows, phase, self.onehot)
        mp = self.masses[self.rep]
        d /= np.sqrt(np.repeat(mp, 3)[:, None] * np.repeat(mp, 3)[None, :]).reshape(self.np, 3, self.np, 3)
        d = d.reshape(3 * self.np, 3 * self.np)
        return 0.5 * (d + d.conj().T)


def commensurate_frequencies(supercell, primitive,
                             force_constants: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Signed frequencies (THz) at all commensurate q-points of the supercell.

    Returns
    -------
    qpoints, frequencies
        (N_L, 3) q-points and (N_L, 3 n_p) ascending frequencies; together they are exactly the
        3N supercell Γ frequencies (Γ acoustic modes are ~0 if the sum rule holds).
    """
    fc = np.asarray(force_constants, dtype=float)
    bd = _BlochData(supercell, primitive)
    qpts, _, _ = commensurate_qpoints(supercell, primitive)
    freqs = np.array([signed_thz(np.linalg.eigvalsh(bd.dynmat(fc, q))) for q in qpts])
    return qpts, freqs


def normal_modes(supercell, force_constants: np.ndarray, primitive=None,
                 method: ModeMethod = "commensurate") -> NormalModes:
    """Real supercell normal modes of Φ with the translations removed exactly.

    Parameters
    ----------
    supercell
        Phonopy supercell (``phonon.supercell``).
    force_constants
        Full (N, N, 3, 3) force constants, eV/Å² (impose the sum rule first, e.g. :class:`FCProjector`).
    primitive
        Phonopy ``Primitive`` (``phonon.primitive``); required for ``method="commensurate"``.
    method
        ``"commensurate"``: per-q dynamical matrices of the primitive cell at the commensurate
        q-points, combined into real supercell modes (cos/sin combinations of ±q pairs).
        ``"supercell"``: direct diagonalisation of the 3N×3N mass-weighted matrix.
    """
    fc = np.asarray(force_constants, dtype=float)
    masses = np.asarray(supercell.masses, dtype=float)
    n = len(masses)
    if fc.shape != (n, n, 3, 3):
        raise ValueError(f"force constants must have shape {(n, n, 3, 3)}, got {fc.shape}")
    if method == "supercell" or primitive is None:
        if method == "commensurate":
            raise ValueError("method='commensurate' needs the primitive cell")
        sq = np.sqrt(np.repeat(masses, 3))
        dm = fc_to_matrix(fc) / sq[:, None] / sq[None, :]
        vals, vecs, mask = eigh_without_translations(0.5 * (dm + dm.T), masses)
        return NormalModes(signed_thz(vals) * ~mask, vals, vecs, mask, masses, np.full(3 * n, -1), None,
                           "supercell")
    if method != "commensurate":
        raise ValueError(f"unknown mode method {method!r}")

    bd = _BlochData(supercell, primitive)
    qpts, ii, ij = commensurate_qpoints(supercell, primitive)
    nb = 3 * bd.np
    cols: list[np.ndarray] = []
    vals_all: list[float] = []
    trans: list[bool] = []
    qidx: list[int] = []
    norm = 1.0 / np.sqrt(bd.n_cells)
    for iq in ii:
        q = qpts[iq]
        dm = bd.dynmat(fc, q)
        if np.max(np.abs(dm.imag)) > 1e-8 * max(1.0, np.max(np.abs(dm.real))):
            raise TDPhononError(None, f"dynamical matrix at q={q} should be real (q ≡ -q)")
        dm = dm.real
        if np.allclose(q, np.rint(q)):
            w, v, mask = eigh_without_translations(dm, masses[bd.rep])
        else:
            w, v = np.linalg.eigh(dm)
            mask = np.zeros(nb, dtype=bool)
        phase = np.cos(2 * np.pi * (bd.lattice @ q))  # ±1
        for b in range(nb):
            e = v[:, b].reshape(bd.np, 3)
            cols.append((e[bd.pidx] * phase[:, None]).reshape(-1) * norm)
            vals_all.append(float(w[b]))
            trans.append(bool(mask[b]))
            qidx.append(iq)
    for iq in ij:
        q = qpts[iq]
        w, v = np.linalg.eigh(bd.dynmat(fc, q))
        phase = np.exp(2j * np.pi * (bd.lattice @ q))
        for b in range(nb):
            e = v[:, b].reshape(bd.np, 3)
            z = (e[bd.pidx] * phase[:, None]).reshape(-1) * norm
            for part in (z.real, z.imag):
                cols.append(np.sqrt(2.0) * part)
                vals_all.append(float(w[b]))
                trans.append(False)
                qidx.append(iq)
    vecs = np.array(cols).T
    vals = np.array(vals_all)
    mask = np.array(trans)
    if mask.sum() != 3 or vecs.shape != (3 * n, 3 * n):
        raise TDPhononError(None, "commensurate-q mode construction failed (translations or mode count)")
    order = np.lexsort((np.arange(len(vals)), vals, ~mask))  # translations first, then ascending
    vals, vecs, mask, qi = vals[order], vecs[:, order], mask[order], np.array(qidx)[order]
    vals = np.where(mask, 0.0, vals)
    return NormalModes(signed_thz(vals), vals, vecs, mask, masses, qi, qpts, "commensurate")


# --------------------------------------------------------------------------------------------
# amplitudes and covariance
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ModeReport:
    """Which supercell modes were imaginary / soft and how the policy treated them.

    Attributes
    ----------
    n_modes, n_translations
        3N and 3.
    n_imaginary
        Non-translational modes with ν < −``imaginary_tol_thz``.
    n_soft
        Non-translational real modes with |ν| ≤ ``imaginary_tol_thz`` or 0 ≤ ν < threshold.
    n_affected
        Modes the policy acted on (``floor``: all modes below the floor frequency).
    min_frequency_thz
        Lowest non-translational frequency (negative if imaginary).
    affected_frequencies_thz
        Frequencies of the affected modes.
    policy
        The policy (``to_dict``).
    """

    n_modes: int
    n_translations: int
    n_imaginary: int
    n_soft: int
    n_affected: int
    min_frequency_thz: float
    affected_frequencies_thz: tuple[float, ...]
    policy: dict
    imaginary_tol_thz: float = 1e-3

    @property
    def flagged(self) -> bool:
        """True when the harmonic model has imaginary or near-zero (< threshold) modes."""
        return self.n_imaginary > 0 or self.n_soft > 0

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["affected_frequencies_thz"] = list(self.affected_frequencies_thz)
        d["flagged"] = self.flagged
        return d


def _sigma2_thermal(nu_thz: np.ndarray, temperature: float, quantum: bool) -> np.ndarray:
    """σ² (amu Å²) of positive frequencies ν (THz)."""
    nu = np.asarray(nu_thz, dtype=float)
    lam = (nu / TO_THZ) ** 2  # eV/(Å² amu)
    if quantum:
        eps = THZ_TO_EV * nu
        if temperature <= 0:
            num = 0.5 * eps
        else:
            x = eps / (2.0 * KB_EV * temperature)
            num = 0.5 * eps / np.tanh(x)
    else:
        num = np.full_like(nu, KB_EV * max(temperature, 0.0))
    return num / lam


def policy_sigma2(nu: np.ndarray, included: np.ndarray, temperature: float, quantum: bool,
                  policy: ModeAmplitudePolicy) -> tuple[np.ndarray, np.ndarray]:
    """σ² (amu Å²) of modes with signed frequencies ``nu`` (THz) under ``policy``, and the affected mask.

    ``included`` marks the modes that get an amplitude at all (False: translations → σ² = 0).
    ``fixed_amplitude`` modes are left at 0 here (their σ² depends on the displacement patterns,
    :func:`mode_amplitudes` fills them in); ``exclude`` modes stay 0.
    """
    nu = np.asarray(nu, dtype=float)
    sigma2 = np.zeros(nu.shape)
    if policy.kind == "floor":
        affected = included & (nu < policy.floor_thz)
        eff = np.where(affected, policy.floor_thz, nu)
        sigma2[included] = _sigma2_thermal(eff[included], temperature, quantum)
        return sigma2, affected
    affected = included & (nu < policy.threshold_thz)
    regular = included & ~affected
    sigma2[regular] = _sigma2_thermal(nu[regular], temperature, quantum)
    if policy.kind == "abs":
        eff = np.maximum(np.abs(nu[affected]), policy.threshold_thz)
        if np.any(eff <= 0):  # threshold 0 and an exactly zero mode
            raise SamplingError(None, "policy 'abs' with threshold_thz=0 met a zero-frequency mode")
        sigma2[affected] = _sigma2_thermal(eff, temperature, quantum)
    return sigma2, affected


def mode_amplitudes(modes: NormalModes, temperature: float, quantum: bool = True,
                    policy: ModeAmplitudePolicy | None = None) -> tuple[np.ndarray, ModeReport]:
    """Mode amplitudes σ_s (√amu·Å) of all supercell modes under ``policy``.

    Returns
    -------
    sigma, report
        (3N,) amplitudes (0 for the translations and for excluded modes) and the mode report.
    """
    policy = policy or ModeAmplitudePolicy()
    nu = modes.frequencies
    tr = modes.is_translation
    tol = 1e-3
    nontr = ~tr
    imag = nontr & (nu < -tol)
    soft = nontr & ~imag & (nu < policy.threshold_thz)
    sigma2, affected = policy_sigma2(nu, nontr, temperature, quantum, policy)
    if policy.kind == "fixed_amplitude":
        pat = modes.displacement_patterns()[:, affected]
        msd = np.sum(pat**2, axis=0)  # Σ_i |w_is|²/m_i per unit amplitude
        sigma2[affected] = modes.natom * policy.amplitude**2 / msd
    valid = nu[nontr]
    report = ModeReport(
        n_modes=len(nu), n_translations=int(tr.sum()), n_imaginary=int(imag.sum()), n_soft=int(soft.sum()),
        n_affected=int(affected.sum()), min_frequency_thz=float(valid.min()) if valid.size else 0.0,
        affected_frequencies_thz=tuple(float(x) for x in nu[affected]), policy=policy.to_dict(),
        imaginary_tol_thz=tol)
    return np.sqrt(sigma2), report


@dataclass(frozen=True, eq=False)
class ThermalCovariance:
    """Σ(T) of a force-constant set, with its normal modes and mode amplitudes.

    Attributes
    ----------
    temperature, quantum, policy
        Inputs.
    modes
        :class:`NormalModes` used.
    sigma
        (3N,) mode amplitudes σ_s (√amu Å).
    matrix
        (3N, 3N) covariance ⟨u uᵀ⟩ in Å² (index 3i+a).
    report
        :class:`ModeReport`.
    """

    temperature: float
    quantum: bool
    policy: ModeAmplitudePolicy
    modes: NormalModes
    sigma: np.ndarray
    matrix: np.ndarray
    report: ModeReport

    @property
    def full(self) -> np.ndarray:
        """Σ in (N, N, 3, 3) layout."""
        return matrix_to_fc(self.matrix)

    @property
    def onsite(self) -> np.ndarray:
        """(N, 3) diagonal ⟨u_ia²⟩ in Å²."""
        return np.diag(self.matrix).reshape(-1, 3).copy()

    def to_dict(self) -> dict[str, Any]:
        return {"temperature": self.temperature, "quantum": self.quantum, "policy": self.policy.to_dict(),
                "mode_method": self.modes.method, "report": self.report.to_dict(),
                "rms_displacement": float(np.sqrt(np.trace(self.matrix) / self.modes.natom))}


def thermal_covariance(modes: NormalModes, temperature: float, quantum: bool = True,
                       policy: ModeAmplitudePolicy | None = None) -> ThermalCovariance:
    """Σ(T) = M^{-1/2} W diag(σ²) Wᵀ M^{-1/2} (physics.md Eq. 2; classical: σ² = k_BT/ω²).

    Parameters
    ----------
    modes
        From :func:`normal_modes`.
    temperature
        K (≥ 0). At 0 K the quantum Σ is the zero-point one and the classical Σ vanishes.
    quantum
        Bose–Einstein (default) or classical amplitudes.
    policy
        Treatment of imaginary / near-zero modes (default :class:`ModeAmplitudePolicy()`).
    """
    if temperature < 0 or not np.isfinite(temperature):
        raise ValueError(f"temperature must be finite and ≥ 0, got {temperature}")
    policy = policy or ModeAmplitudePolicy()
    sigma, report = mode_amplitudes(modes, temperature, quantum, policy)
    a = modes.displacement_patterns() * sigma[None, :]
    cov = a @ a.T
    return ThermalCovariance(float(temperature), bool(quantum), policy, modes, sigma, 0.5 * (cov + cov.T),
                             report)


# --------------------------------------------------------------------------------------------
# sampling
# --------------------------------------------------------------------------------------------
def canonical_order(reference: Atoms, decimals: int = 5) -> np.ndarray:
    """Atom indices sorted by (atomic number, wrapped fractional z, y, x) of the reference cell."""
    frac = np.round(reference.get_scaled_positions(wrap=True), decimals) % 1.0
    frac = np.round(frac, decimals)
    return np.lexsort((frac[:, 0], frac[:, 1], frac[:, 2], reference.numbers))


def minimum_distances(reference: Atoms, displacements: np.ndarray,
                      min_distance_hint: float = 0.0, reference_distance: float | None = None) -> np.ndarray:
    """Shortest interatomic distance (Å, periodic) of each displaced configuration.

    Exact: only pairs within ``d0 + 2 max|u|`` in the reference can come closer than ``d0``, where
    ``d0`` is the reference shortest distance (pairs are taken from an ASE neighbour list).
    """
    from ase.neighborlist import neighbor_list

    u = np.asarray(displacements, dtype=float)
    if u.ndim == 2:
        u = u[None]
    umax = float(np.max(np.linalg.norm(u, axis=-1))) if u.size else 0.0
    d_ref = _reference_min_distance(reference) if reference_distance is None else reference_distance
    cutoff = max(d_ref, min_distance_hint) + 2.0 * umax + 1e-6
    i, j, s = neighbor_list("ijS", reference, cutoff)
    keep = i < j
    i, j, s = i[keep], j[keep], s[keep]
    if len(i) == 0:
        return np.full(len(u), np.inf)
    base = reference.positions[j] - reference.positions[i] + s @ reference.cell.array
    d = base[None] + u[:, j] - u[:, i]
    return np.min(np.linalg.norm(d, axis=-1), axis=1)


def _reference_min_distance(reference: Atoms) -> float:
    from ase.neighborlist import neighbor_list

    cut = 1.0
    while cut < 20.0:
        d = neighbor_list("d", reference, cut)
        if len(d):
            return float(d.min())
        cut *= 1.5
    return float("inf")


@dataclass(frozen=True, eq=False)
class SamplingResult:
    """Displaced supercells drawn from Σ(T).

    Attributes
    ----------
    displacements
        (n, N, 3) Å, phonopy supercell atom order.
    supercells
        The displaced supercells (ASE ``Atoms``, same order; ``info["label"]`` set).
    covariance
        The :class:`ThermalCovariance` sampled.
    settings
        temperature, quantum, policy, seed, n, antithetic, kind, caps, min distance, mode method.
    n_clipped_atoms
        Atom displacements shortened to the cap (``cap_mode="clip"``), summed over configurations.
    min_distances
        (n,) shortest interatomic distance of each configuration (Å).
    """

    displacements: np.ndarray
    supercells: list[Atoms]
    covariance: ThermalCovariance
    settings: dict
    n_clipped_atoms: int = 0
    min_distances: np.ndarray = field(default_factory=lambda: np.zeros(0))

    @property
    def sigma(self) -> np.ndarray:
        """Σ (3N, 3N) in Å²."""
        return self.covariance.matrix

    def to_dict(self) -> dict[str, Any]:
        return {"settings": self.settings, "covariance": self.covariance.to_dict(),
                "n_clipped_atoms": self.n_clipped_atoms,
                "min_distance_found": float(np.min(self.min_distances)) if self.min_distances.size else None,
                "max_displacement_found": float(np.max(np.linalg.norm(self.displacements, axis=-1)))
                if self.displacements.size else 0.0}


def sample_displacements(
    covariance: ThermalCovariance,
    reference: Atoms,
    n_configurations: int,
    *,
    kind: SamplingKind = "gaussian",
    antithetic: bool = False,
    seed: int = 0,
    max_displacement: float | None = None,
    max_displacement_ratio: float = 0.5,
    cap_mode: CapMode = "raise",
    min_distance: float | None = None,
    min_distance_ratio: float = 0.5,
    label: str | None = None,
) -> SamplingResult:
    """Draw displaced supercells u ~ Σ(T).

    Parameters
    ----------
    covariance
        From :func:`thermal_covariance`.
    reference
        Undisplaced supercell as ASE ``Atoms`` (phonopy supercell order; :func:`supercell_to_ase`).
    n_configurations
        Number of configurations n (even when ``antithetic``).
    kind
        ``"gaussian"``: u = M^{-1/2} W diag(σ) Wᵀ ξ with ξ ~ N(0, I) (the symmetric square root of
        the mass-weighted covariance: same distribution as M^{-1/2} W diag(σ) ξ, but independent of
        the eigenvector gauge within degenerate subspaces). ``"fixed_amplitude"``: normal-mode
        sampling u = M^{-1/2} W diag(σ) ξ with ξ_s = ±1 (random signs); ⟨u uᵀ⟩ = Σ exactly on
        average, each configuration has the mean energy, but the distribution is not Gaussian.
        Gaussian draws are attached to atoms in :func:`canonical_order`, so that a permutation of
        the atoms (or a rigid translation that does not wrap atoms) gives the same displacement of
        every atom for the same seed; fixed-amplitude draws are attached to modes and are only
        statistically invariant.
    antithetic
        Configurations come in ± pairs (u, −u): odd (cubic) noise cancels in averages.
    seed
        Integer seed of a ``numpy.random.Generator`` (same seed ⇒ identical displacements).
    max_displacement
        Cap on each atom's displacement norm (Å); default ``max_displacement_ratio`` (0.5) × the
        shortest interatomic distance of the reference supercell (1.4 Å for NaCl, 0.98 Å for the
        Ti–O bond of SrTiO3). Legitimate thermal tails reach ≈ 0.3 × that distance near melting
        (Lindemann), so a smaller default would reject valid high-temperature samples; the
        minimum-distance check and the model's force limit catch the rest.
    cap_mode
        ``"raise"``: :class:`SamplingError` if any atom exceeds the cap; ``"clip"``: shorten those
        displacements to the cap (counted in ``n_clipped_atoms``; the distribution is then no
        longer exactly Σ).
    min_distance
        Minimum allowed interatomic distance (Å); default ``min_distance_ratio`` × the shortest
        distance of the reference supercell. A closer pair raises :class:`SamplingError`.
    label
        Material name used in errors and in ``Atoms.info["label"]``.

    Raises
    ------
    SamplingError
        Displacement above the cap (``cap_mode="raise"``) or atoms closer than ``min_distance``.
    """
    n = int(n_configurations)
    if n < 1:
        raise ValueError("n_configurations must be ≥ 1")
    if antithetic and n % 2:
        raise ValueError("antithetic sampling needs an even number of configurations")
    if kind not in ("gaussian", "fixed_amplitude"):
        raise ValueError(f"unknown sampling kind {kind!r}")
    if cap_mode not in ("raise", "clip"):
        raise ValueError(f"unknown cap_mode {cap_mode!r}")
    modes = covariance.modes
    natom = modes.natom
    if len(reference) != natom:
        raise ValueError("reference supercell and covariance have different atom counts")
    d_ref = _reference_min_distance(reference)
    cap = float(max_displacement) if max_displacement is not None else float(max_displacement_ratio * d_ref)
    rng = np.random.default_rng(int(seed))
    n_base = n // 2 if antithetic else n
    pat = modes.displacement_patterns()  # (3N, 3N)
    sigma = covariance.sigma
    if kind == "gaussian":
        # random numbers are attached to atoms in a canonical (species, position) order, so the
        # same seed gives the same displacement of the same atom whatever the atom order
        xi = np.empty((n_base, natom, 3))
        xi[:, canonical_order(reference)] = rng.standard_normal((n_base, natom, 3))
        xi = xi.reshape(n_base, 3 * natom)
        # symmetric square root in mass-weighted space: W diag(σ) Wᵀ
        amp = (xi @ modes.eigenvectors) * sigma[None, :]
    else:
        amp = rng.choice(np.array([-1.0, 1.0]), size=(n_base, 3 * natom)) * sigma[None, :]
    u_base = (amp @ pat.T).reshape(n_base, natom, 3)
    if antithetic:
        u = np.empty((n, natom, 3))
        u[0::2] = u_base
        u[1::2] = -u_base
    else:
        u = u_base
    norms = np.linalg.norm(u, axis=-1)
    n_clipped = 0
    too_far = norms > cap
    if np.any(too_far):
        k, i = np.argwhere(too_far)[0]
        if cap_mode == "raise":
            rep = covariance.report
            raise SamplingError(
                label,
                f"atom {int(i)} of configuration {int(k)} displaced by {norms[k, i]:.3f} Å > cap "
                f"{cap:.3f} Å at T={covariance.temperature:g} K (policy {rep.policy['kind']}, "
                f"{rep.n_imaginary} imaginary / {rep.n_soft} soft modes, min frequency "
                f"{rep.min_frequency_thz:.3f} THz); use cap_mode='clip' or another mode policy",
            )
        scale = np.where(too_far, cap / np.maximum(norms, 1e-300), 1.0)
        u = u * scale[..., None]
        n_clipped = int(too_far.sum())
    dmin_allowed = float(min_distance) if min_distance is not None else float(min_distance_ratio * d_ref)
    dmins = minimum_distances(reference, u, dmin_allowed, d_ref)
    if np.any(dmins < dmin_allowed):
        k = int(np.argmin(dmins))
        raise SamplingError(
            label,
            f"configuration {k} at T={covariance.temperature:g} K brings two atoms to {dmins[k]:.3f} Å "
            f"< minimum distance {dmin_allowed:.3f} Å (reference shortest distance {d_ref:.3f} Å)",
        )
    cells = []
    for k in range(n):
        a = reference.copy()
        a.positions = reference.positions + u[k]
        a.info["label"] = f"{label or reference.get_chemical_formula()} T={covariance.temperature:g}K #{k}"
        cells.append(a)
    settings = {
        "temperature": float(covariance.temperature),
        "quantum": bool(covariance.quantum),
        "policy": covariance.policy.to_dict(),
        "seed": int(seed),
        "n_configurations": n,
        "antithetic": bool(antithetic),
        "kind": kind,
        "max_displacement": cap,
        "max_displacement_rule": ("absolute" if max_displacement is not None
                                  else f"{max_displacement_ratio:g} x reference shortest distance"),
        "cap_mode": cap_mode,
        "min_distance": dmin_allowed,
        "min_distance_rule": ("absolute" if min_distance is not None
                              else f"{min_distance_ratio:g} x reference shortest distance"),
        "mode_method": modes.method,
    }
    return SamplingResult(u, cells, covariance, settings, n_clipped, dmins)


def thermal_samples(
    phonon,
    temperature: float,
    n_configurations: int,
    *,
    force_constants: np.ndarray | None = None,
    quantum: bool = True,
    policy: ModeAmplitudePolicy | None = None,
    kind: SamplingKind = "gaussian",
    antithetic: bool = False,
    seed: int = 0,
    max_displacement: float | None = None,
    cap_mode: CapMode = "raise",
    min_distance: float | None = None,
    mode_method: ModeMethod = "commensurate",
    projector: FCProjector | None = None,
    impose_symmetry: bool = True,
    label: str | None = None,
) -> SamplingResult:
    """Convenience: symmetrise Φ (sum rule), build Σ(T) and draw configurations for a phonopy object.

    ``force_constants`` defaults to ``phonon.force_constants`` (compact ones are expanded). With
    ``impose_symmetry`` the symfc projector (space group + sum rule) is applied first.
    """
    fc = full_force_constants(phonon) if force_constants is None else np.asarray(force_constants, dtype=float)
    if impose_symmetry:
        projector = projector or FCProjector.from_phonopy(phonon)
        fc = projector.project(fc)
    modes = normal_modes(phonon.supercell, fc, phonon.primitive, method=mode_method)
    cov = thermal_covariance(modes, temperature, quantum, policy)
    return sample_displacements(cov, supercell_to_ase(phonon.supercell), n_configurations, kind=kind,
                                antithetic=antithetic, seed=seed, max_displacement=max_displacement,
                                cap_mode=cap_mode, min_distance=min_distance, label=label)

