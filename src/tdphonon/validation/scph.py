"""Self-consistent phonons (SCPH) from quartic IFCs: the first-order (loop) renormalisation.

At temperature T the SCPH effective harmonic force constants solve

    Φ(T) = Φ₂ + ½ Σ_{kl} Φ₄(i, j, k, l) ⟨u_k u_l⟩_{Φ(T), T}                         (1)

(Tadano & Tsuneyuki, PRB 92, 054301 (2015): the quartic "loop" self-energy; the cubic bubble is not
part of SCPH). The displacement covariance ⟨u uᵀ⟩ is built in **q-space**: from the eigenvectors of
the dynamical matrices at the supercell's commensurate q-points with Bose–Einstein amplitudes
(:func:`tdphonon.sampling.thermal_covariance`, the same Σ(T) the ML TDPH engine uses), so (1) is
the q-space SCPH equation on that mesh (or, with ``q_mesh``, on a denser Fourier-interpolated mesh:
:func:`mesh_covariance`). It is iterated with linear mixing until the commensurate
frequencies change by less than ``tol_thz``. As in the ML engine (:mod:`tdphonon.renormalize`), the
mixing α is halved (not below ``min_mixing``) after an overshoot: a soft mode stabilised by a large
quartic term makes the map steeper than linear mixing with a fixed α can follow (slope below
1 − 2/α), which would otherwise settle into a period-2 cycle.

The quartic contraction ½ Φ₄ : Σ is a sparse linear map from Σ (3N × 3N) to ΔΦ (3N × 3N), built
once from the IFCs (:class:`QuarticContraction`): hiPhive force constants (sorted clusters,
expanded to every index permutation) or any explicit dictionary of 4-atom clusters.

Closed form used by the tests: an on-site quartic term (λ/4) Σ_{iα} u_{iα}⁴ has Φ₄(iα,iα,iα,iα) = 6λ,
so (1) reads Φ = Φ₂ + 3λ diag Σ(Φ).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp

from tdphonon.sampling import (
    FCProjector,
    ModeAmplitudePolicy,
    commensurate_frequencies,
    eigh_without_translations,
    fc_mass_weight,
    fc_to_matrix,
    matrix_to_fc,
    normal_modes,
    policy_sigma2,
    signed_thz,
    thermal_covariance,
)

__all__ = ["MeshCovariance", "QuarticContraction", "SCPHResult", "mesh_covariance", "scph"]


def mesh_covariance(phonon, force_constants: np.ndarray, temperature: float, mesh: tuple[int, int, int],
                    quantum: bool = True, policy: ModeAmplitudePolicy | None = None) -> np.ndarray:
    """⟨u uᵀ⟩ (3N × 3N, Å²) between the atoms of ``phonon.supercell`` from a dense q-mesh.

    Φ is Fourier-interpolated (phonopy) onto a Γ-centred ``mesh`` of the primitive cell and

        ⟨u_aα u_bβ⟩ = Re Σ_{q,ν} σ²_{qν} e_{p(a)α}(q,ν) e*_{p(b)β}(q,ν) e^{2πi q·(x_a − x_b)} / (N_q √(m_a m_b))

    with x_a − x_b the minimum-image vector in the supercell (phonopy's eigenvector convention
    carries the atomic-position phase) and σ² the Bose–Einstein mode amplitudes under ``policy``
    (the three uniform translations at Γ get none: projected out exactly, as in
    :func:`tdphonon.sampling.normal_modes`, also for a Φ that breaks the acoustic sum rule). On the
    supercell's commensurate mesh this is exactly :func:`tdphonon.sampling.thermal_covariance` for
    any Φ; a denser mesh converges the SCPH loop integral in q (pairs within the quartic cutoff,
    < half the supercell width, are unambiguous).

    One-off form of :class:`MeshCovariance`; build that once to evaluate many Φ on one mesh.
    """
    return MeshCovariance(phonon, mesh)(force_constants, temperature, quantum, policy)


class MeshCovariance:
    """:func:`mesh_covariance` on a fixed structure and q-mesh, for many force constants.

    The phonopy object (its symmetry search is most of the cost of one evaluation on small cells)
    and the minimum-image geometry are set up once; each call only sets Φ, runs the mesh and sums.
    The results are the same as :func:`mesh_covariance`'s for every Φ.

    Parameters
    ----------
    phonon
        phonopy object of the supercell (not modified).
    mesh
        Γ-centred q-mesh of the primitive cell.
    """

    def __init__(self, phonon, mesh: tuple[int, int, int]):
        from tdphonon.renormalize import phonopy_with_force_constants

        self.mesh = tuple(int(x) for x in mesh)
        n = len(phonon.supercell)
        self._ph = phonopy_with_force_constants(phonon, np.zeros((n, n, 3, 3)))
        sc, prim = self._ph.supercell, self._ph.primitive
        p2p = prim.p2p_map
        p_of = np.array([p2p[i] for i in prim.s2p_map])
        pos = np.asarray(sc.positions)
        lat = np.asarray(sc.cell)
        diff = (pos[:, None, :] - pos[None, :, :]) @ np.linalg.inv(lat)
        diff -= np.round(diff)
        self._d_prim = (diff @ lat) @ np.linalg.inv(np.asarray(prim.cell))  # (N, N, 3) primitive fractional
        self._idx = (3 * p_of[:, None] + np.arange(3)[None, :]).ravel()  # (3N,) rows of C per supercell dof
        self._prim_masses = np.asarray(prim.masses, dtype=float)
        m = np.repeat(np.asarray(sc.masses), 3)
        self._sqrt_mm = np.sqrt(np.outer(m, m))

    def __call__(self, force_constants: np.ndarray, temperature: float, quantum: bool = True,
                 policy: ModeAmplitudePolicy | None = None) -> np.ndarray:
        """⟨u uᵀ⟩ (3N × 3N, Å²) for Φ = ``force_constants`` (N, N, 3, 3) at ``temperature`` (K)."""
        policy = policy or ModeAmplitudePolicy()
        ph = self._ph
        n = len(ph.supercell)
        fc = np.asarray(force_constants, dtype=float)
        if fc.shape != (n, n, 3, 3):
            raise ValueError(f"force constants must have shape {(n, n, 3, 3)}, got {fc.shape}")
        ph.force_constants = fc  # phonopy rebuilds its dynamical matrix
        ph.run_mesh(list(self.mesh), is_gamma_center=True, is_mesh_symmetry=False, with_eigenvectors=True)
        m = ph.mesh
        qpts, freqs, evecs = np.asarray(m.qpoints), np.asarray(m.frequencies), np.asarray(m.eigenvectors)
        nq, nb = freqs.shape
        included = np.ones((nq, nb), dtype=bool)
        for iq in np.flatnonzero(np.all(np.abs(qpts) < 1e-12, axis=1)):
            # Γ: the uniform translations removed exactly, as in the supercell route
            # (normal_modes); for a Φ that breaks the acoustic sum rule they are not eigenvectors
            ph.dynamical_matrix.run(qpts[iq])
            dm = np.asarray(ph.dynamical_matrix.dynamical_matrix).real
            vals, vecs, mask = eigh_without_translations(0.5 * (dm + dm.T), self._prim_masses)
            freqs[iq], evecs[iq], included[iq] = signed_thz(vals) * ~mask, vecs, ~mask
        sigma2, _ = policy_sigma2(freqs.ravel(), included.ravel(), temperature, quantum, policy)
        sigma2 = sigma2.reshape(nq, nb)
        cq = np.einsum("qim,qm,qjm->qij", evecs, sigma2, evecs.conj())  # (nq, 3n_p, 3n_p)
        idx = self._idx
        out = np.zeros((3 * n, 3 * n))
        for iq in range(nq):
            phase = np.exp(2j * np.pi * (self._d_prim @ qpts[iq]))  # (N, N)
            block = cq[iq][np.ix_(idx, idx)]
            out += np.real(block * np.repeat(np.repeat(phase, 3, axis=0), 3, axis=1))
        out /= nq * self._sqrt_mm
        return 0.5 * (out + out.T)


#: the 24 orderings of a quartet, in the order :meth:`QuarticContraction.from_sorted` tries them (the
#: iteration order of their ``set``, deterministic for tuples of ints: kept from the first
#: implementation so that results stay bitwise the same)
_PERMUTATIONS: tuple[tuple[int, ...], ...] = tuple(set(itertools.permutations(range(4))))


class QuarticContraction:
    """The sparse linear map Σ ↦ ½ Φ₄ : Σ (both 3N × 3N, index 3i+α).

    Parameters
    ----------
    n_atoms
        Atoms in the supercell.
    clusters
        ``{(i, j, k, l): F}`` with F the (3, 3, 3, 3) block Φ₄(i,j,k,l) in eV/Å⁴ — every ordered
        index tuple with a non-zero block (:meth:`from_sorted` expands hiPhive's sorted clusters).
    """

    def __init__(self, n_atoms: int, clusters: Mapping[tuple[int, int, int, int], np.ndarray]) -> None:
        keys = np.array(list(clusters.keys()), dtype=np.int64).reshape(-1, 4)
        blocks = np.array([np.asarray(f, dtype=float) for f in clusters.values()]).reshape(-1, 3, 3, 3, 3)
        self._build(n_atoms, keys, blocks)

    def _build(self, n_atoms: int, keys: np.ndarray, blocks: np.ndarray) -> None:
        """Assemble the sparse matrix from ``keys`` (M, 4) and their ``blocks`` (M, 3, 3, 3, 3), in order."""
        n3 = 3 * n_atoms
        a, b, c, d = (x.ravel() for x in np.meshgrid(*[np.arange(3)] * 4, indexing="ij"))
        i, j, k, l = (keys[:, m, None] for m in range(4))
        rows = ((3 * i + a) * n3 + 3 * j + b).ravel()
        cols = ((3 * k + c) * n3 + 3 * l + d).ravel()
        vals = (0.5 * blocks.reshape(len(keys), 81)).ravel()  # C order of (a, b, c, d) = the meshgrid order
        self.n_atoms = n_atoms
        self.n_clusters = len(keys)
        self.matrix = sp.csr_matrix((vals, (rows, cols)), shape=(n3 * n3, n3 * n3))

    @classmethod
    def from_sorted(cls, n_atoms: int, sorted_clusters: Mapping[tuple[int, ...], np.ndarray]) -> QuarticContraction:
        """From clusters stored once per sorted atom tuple (hiPhive ``SortedForceConstants``).

        The block of a permuted tuple is the transposed block (hiPhive's convention); each distinct
        permutation is added once (for a tuple with repeated atoms, the block of the first
        permutation in :data:`_PERMUTATIONS` order that gives it).
        """
        quartets = [(cl, f) for cl, f in sorted_clusters.items() if len(cl) == 4]
        cl = np.array([q[0] for q in quartets], dtype=np.int64).reshape(-1, 4)
        f = np.array([np.asarray(q[1], dtype=float) for q in quartets]).reshape(-1, 3, 3, 3, 3)
        perms = np.array(_PERMUTATIONS)
        keys = cl[:, perms]  # (K, 24, 4): cluster-major, permutation-minor
        flat = keys.reshape(-1, 4)
        _, first = np.unique(flat, axis=0, return_index=True)  # first occurrence of every distinct tuple
        first.sort()
        which_cl, which_perm = np.divmod(first, len(perms))
        blocks = np.empty((len(first), 3, 3, 3, 3))
        for p, perm in enumerate(_PERMUTATIONS):
            sel = which_perm == p
            if sel.any():
                blocks[sel] = f[which_cl[sel]].transpose(0, *(1 + q for q in perm))
        out = cls.__new__(cls)
        out._build(n_atoms, flat[first], blocks)
        return out

    @classmethod
    def from_hiphive(cls, force_constants) -> QuarticContraction:
        """From hiPhive ``ForceConstants`` of the supercell (order 4 used)."""
        return cls.from_sorted(len(force_constants.supercell), force_constants.get_fc_dict(order=4))

    @classmethod
    def onsite(cls, n_atoms: int, lam: float) -> QuarticContraction:
        """The on-site quartic model (λ/4) Σ u_{iα}⁴: Φ₄(iα,iα,iα,iα) = 6λ."""
        clusters = {}
        for i in range(n_atoms):
            f = np.zeros((3, 3, 3, 3))
            for al in range(3):
                f[al, al, al, al] = 6.0 * lam
            clusters[(i, i, i, i)] = f
        return cls(n_atoms, clusters)

    def __call__(self, covariance: np.ndarray) -> np.ndarray:
        """ΔΦ = ½ Φ₄ : Σ as a (3N, 3N) matrix (eV/Å²) for Σ (3N, 3N) in Å²."""
        n3 = 3 * self.n_atoms
        return (self.matrix @ np.asarray(covariance, dtype=float).ravel()).reshape(n3, n3)


@dataclass
class SCPHResult:
    """Outcome of :func:`scph` at one temperature."""

    temperature: float
    force_constants: np.ndarray = field(repr=False)
    frequencies_thz: np.ndarray = field(repr=False)
    harmonic_frequencies_thz: np.ndarray = field(repr=False)
    converged: bool
    n_iterations: int
    max_change_thz: float
    history: list[float] = field(default_factory=list)
    mixing: list[float] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"temperature": self.temperature, "converged": self.converged, "n_iterations": self.n_iterations,
                "max_change_thz": self.max_change_thz, "history_thz": self.history, "mixing": self.mixing,
                "min_frequency_thz": float(np.min(self.frequencies_thz))}


def scph(supercell, primitive, fc2: np.ndarray, quartic: QuarticContraction, temperature: float,
         mixing: float = 0.5, tol_thz: float = 1e-4, max_iterations: int = 200, quantum: bool = True,
         projector: FCProjector | None = None, policy: ModeAmplitudePolicy | None = None,
         initial: np.ndarray | None = None, q_mesh: tuple[int, int, int] | None = None,
         phonon=None, adaptive_mixing: bool = True, min_mixing: float = 0.05) -> SCPHResult:
    """Solve the SCPH equation (1) at ``temperature`` by mixed fixed-point iteration.

    Parameters
    ----------
    supercell, primitive
        phonopy ``Supercell`` / ``Primitive`` (``phonon.supercell``, ``phonon.primitive``).
    fc2
        Harmonic IFCs Φ₂ (N, N, 3, 3), eV/Å².
    quartic
        :class:`QuarticContraction` of Φ₄ on the same supercell.
    temperature
        K.
    mixing
        Φ ← (1 − α) Φ + α · (Φ₂ + ½ Φ₄ : Σ(Φ)), starting with α = ``mixing``.
    tol_thz, max_iterations
        Convergence on the largest change of a commensurate frequency between iterations (after the
        mixing α was lowered, on ``tol_thz · α / mixing``: the steps are that much shorter).
    quantum
        Bose–Einstein (default) or classical amplitudes.
    projector
        Optional symmetry / sum-rule projector applied to every update (e.g. :class:`FCProjector`).
    policy
        Imaginary / soft-mode treatment in Σ (default: :class:`ModeAmplitudePolicy`); imaginary
        modes of the *converged* Φ(T) are reported through the frequencies (negative = imaginary).
    initial
        Warm start (e.g. the result at a neighbouring temperature).
    q_mesh, phonon
        Dense q-mesh for the covariance (:func:`mesh_covariance`; needs the phonopy object
        ``phonon`` of the supercell); ``None``: the supercell's commensurate q-points.
    adaptive_mixing, min_mixing
        Halve α, not below ``min_mixing``, when the undamped update d = Φ₂ + ½ Φ₄ : Σ(Φ) − Φ
        reversed its direction and grew (mass-weighted norm) since the previous iteration
        (:func:`tdphonon.renormalize.adapt_mixing`); α is never raised again. A run that never
        overshoots is the same as with ``adaptive_mixing=False``. The α of every iteration is
        recorded in :attr:`SCPHResult.mixing`.
    """
    from tdphonon.renormalize import adapt_mixing

    if not 0.0 < min_mixing <= mixing <= 1.0:
        raise ValueError(f"need 0 < min_mixing <= mixing <= 1 (min_mixing {min_mixing}, mixing {mixing})")
    if q_mesh is not None and phonon is None:
        raise ValueError("q_mesh needs the phonopy object of the supercell (phonon=...)")
    phi2 = fc_to_matrix(np.asarray(fc2, dtype=float))
    freq0 = commensurate_frequencies(supercell, primitive, np.asarray(fc2, dtype=float))[1]
    fc = np.asarray(initial if initial is not None else fc2, dtype=float).copy()
    freq = commensurate_frequencies(supercell, primitive, fc)[1]
    history: list[float] = []
    alphas: list[float] = []
    mass_weight = fc_mass_weight(supercell)
    alpha, prev_step, prev_norm = float(mixing), None, np.inf
    change = np.inf
    dense = MeshCovariance(phonon, q_mesh) if q_mesh is not None else None
    for it in range(1, max_iterations + 1):
        if dense is not None:
            cov = dense(fc, temperature, quantum, policy)
        else:
            cov = thermal_covariance(normal_modes(supercell, fc, primitive), temperature, quantum=quantum,
                                     policy=policy).matrix
        target = matrix_to_fc(phi2 + quartic(cov))
        if projector is not None:
            target = projector.project(target)
        if adaptive_mixing:
            step = ((target - fc) / mass_weight).ravel()  # the undamped update
            norm = float(np.linalg.norm(step))
            if prev_step is not None:
                alpha, _ = adapt_mixing(alpha, step, prev_step, norm, prev_norm, min_mixing)
            prev_step, prev_norm = step, norm
        alphas.append(alpha)
        fc = (1.0 - alpha) * fc + alpha * target
        new = commensurate_frequencies(supercell, primitive, fc)[1]
        change = float(np.max(np.abs(new - freq)))
        history.append(change)
        freq = new
        if change < tol_thz * alpha / mixing:  # a halved α takes half steps: the same distance to the fixed point
            return SCPHResult(float(temperature), fc, freq, freq0, True, it, change, history, alphas)
    return SCPHResult(float(temperature), fc, freq, freq0, False, max_iterations, change, history, alphas)
