"""Model-based estimate of ⟨∂²V⟩_Σ: a quartic Taylor model fitted to the odd part of ± force pairs.

For an antithetic pair (u, −u) the odd part of the forces

    F₋(u) = [F(u) − F(−u)] / 2 = −Φ₂ u − (1/3!) Φ₄ u u u + O(u⁵)                          (1)

has no cubic (or any even-order) term. Φ₂ (in the symfc symmetric basis of the whole supercell,
the same basis as the ``force_fit`` estimator) and Φ₄ (hiPhive cluster space: space group,
permutations and acoustic sum rules; clusters up to ``quartic_shells`` neighbour shells) are fitted
jointly to (1) by least squares. For u ~ N(0, Σ), Wick's theorem gives the thermal Hessian of the
model in closed form,

    ⟨∂²V⟩_Σ = Φ₂ + ½ Φ₄ : Σ                                                          (2)

(the cubic term is odd in u and averages out), and the self-consistent fixed point Φ = Φ₂ + ½ Φ₄ : Σ(Φ)
is the q-space SCPH equation on the supercell's commensurate mesh (:func:`tdphonon.validation.scph.scph`),
solved without further force calls.

Why: the ``force_fit`` estimator regresses F on u *linearly*, so the anharmonic forces act as noise
and its error falls like 1/√n (for SrTiO3 at 300 K ≈ 2.4 THz/√n, ``docs/methods.md``). Here the
anharmonic forces are part of the model: for a potential that *is* quartic the fit is exact once
the data determine the parameters (a few pairs), and for a real model the error is the model's
truncation error — 6th- and higher-order terms, quartic couplings beyond the cutoff — which the
fit residual (``rmse``) measures. The price is that bias: compare with ``force_fit`` on a material
before trusting it in a campaign.

Units: Å, eV; Φ₂ in eV/Å², Φ₄ in eV/Å⁴.
"""

from __future__ import annotations

import hashlib
import logging
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

from tdphonon.sampling import FCProjector, fc_to_matrix, matrix_to_fc, supercell_to_ase

__all__ = ["QuarticFitter", "QuarticModel", "odd_forces"]


@contextmanager
def _quiet_hiphive():
    log = logging.getLogger("hiphive")
    level = log.level
    log.setLevel(logging.WARNING)
    try:
        yield
    finally:
        log.setLevel(level)


def odd_forces(displacements: np.ndarray, forces: np.ndarray, tol: float = 1e-8) -> tuple[np.ndarray, np.ndarray]:
    """(u, F₋) of each ± pair of a sequence of configurations stored as adjacent pairs (u, −u).

    Raises
    ------
    ValueError
        The configurations are not antithetic pairs (odd count, or u₂ₖ₊₁ ≠ −u₂ₖ).
    """
    u = np.asarray(displacements, dtype=float)
    f = np.asarray(forces, dtype=float)
    if u.shape != f.shape or u.ndim != 3 or len(u) % 2:
        raise ValueError(f"need an even number of (N, 3) configurations in ± pairs; got shapes {u.shape}, {f.shape}")
    if not np.allclose(u[1::2], -u[0::2], rtol=0.0, atol=tol):
        raise ValueError("the configurations are not antithetic pairs (u, -u): the quartic Taylor fit needs "
                         "antithetic=True")
    return u[0::2], 0.5 * (f[0::2] - f[1::2])


@dataclass
class QuarticModel:
    """V ≈ ½ Φ₂ u u + (1/3!) Φ₃ u u u + (1/4!) Φ₄ u u u u restricted to what the odd forces determine.

    Attributes
    ----------
    fc2
        Φ₂ (N, N, 3, 3), eV/Å², symmetric (symfc basis).
    quartic
        :class:`~tdphonon.validation.scph.QuarticContraction` of Φ₄ (Σ ↦ ½ Φ₄ : Σ).
    n_pairs, n_parameters
        Size of the fit (± pairs used; Φ₂ + Φ₄ parameters).
    rmse, force_rms
        RMS residual of the odd forces (eV/Å; weighted when weights were given) and RMS odd force:
        ``rmse / force_rms`` is the part of the anharmonic force the model does not describe.
    """

    fc2: np.ndarray = field(repr=False)
    quartic: object = field(repr=False)
    n_pairs: int
    n_parameters: int
    rmse: float
    force_rms: float

    def thermal_force_constants(self, covariance: np.ndarray) -> np.ndarray:
        """⟨∂²V⟩_Σ = Φ₂ + ½ Φ₄ : Σ (N, N, 3, 3) for the displacement covariance Σ (3N × 3N, Å²)."""
        return matrix_to_fc(fc_to_matrix(self.fc2) + self.quartic(np.asarray(covariance, dtype=float)))

    def to_dict(self) -> dict:
        return {"n_pairs": self.n_pairs, "n_parameters": self.n_parameters, "rmse_odd_force": self.rmse,
                "rms_odd_force": self.force_rms,
                "relative_residual": self.rmse / self.force_rms if self.force_rms > 0 else float("nan")}


class QuarticFitter:
    """Fits :class:`QuarticModel` to ± pairs of one phonopy supercell (cluster space built once).

    Parameters
    ----------
    phonon
        phonopy object of the supercell (its ``primitive`` defines the cluster space).
    projector
        The symfc projector of that supercell (its basis is the Φ₂ basis).
    quartic_shells
        Neighbour shells of the quartic clusters (default 2, as the paper's validation fits);
        ignored when ``quartic_cutoff`` (Å) is given.
    acoustic_sum_rules
        Impose the translational sum rules on Φ₄ (hiPhive's default; off only for potentials that
        pin atoms, e.g. an on-site term).
    """

    def __init__(self, phonon, projector: FCProjector, quartic_shells: int = 2,
                 quartic_cutoff: float | None = None, acoustic_sum_rules: bool = True) -> None:
        from hiphive.force_constant_model import ForceConstantModel

        from tdphonon.validation.ifc import shell_cutoffs

        prim = supercell_to_ase(phonon.primitive)
        first = shell_cutoffs(prim, [1])[0]
        cut4 = float(quartic_cutoff) if quartic_cutoff is not None else shell_cutoffs(prim, [quartic_shells])[0]
        self.ideal = supercell_to_ase(phonon.supercell)
        self.natom = len(self.ideal)
        self.quartic_cutoff = cut4
        with _quiet_hiphive():
            # orders 2 and 3 at the smallest cutoff: only the order-4 parameters are used
            self.cluster_space = _cluster_space(prim, (first, first, cut4), acoustic_sum_rules)
            self._fcm = ForceConstantModel(self.ideal, self.cluster_space)
        self._cols4 = np.asarray(self.cluster_space.get_parameter_indices(4), dtype=int)
        self.projector = projector
        self._fc2_design = _fc2_design_operator(projector)
        # quartic design rows per displacement (sha1 of its bytes): pooled fits see the same pairs again
        self._a4_cache: dict[bytes, np.ndarray] = {}

    @property
    def n_parameters(self) -> int:
        return int(self.projector.n_basis + self._cols4.size)

    def design(self, u: np.ndarray) -> np.ndarray:
        """(n·3N, n_basis + n_quartic) design matrix of (1) for displacements u (n, N, 3)."""
        n = len(u)
        n3 = 3 * self.natom
        nb = self.projector.n_basis
        a2 = -(self._fc2_design @ u.reshape(n, n3).T)  # (3N·nb, n)
        a2 = a2.reshape(n3, nb, n).transpose(2, 0, 1).reshape(n * n3, nb)
        return np.hstack([a2, np.concatenate([self._quartic_rows(x) for x in u])])

    def _quartic_rows(self, x: np.ndarray) -> np.ndarray:
        key = hashlib.sha1(np.ascontiguousarray(x).tobytes()).digest()
        rows = self._a4_cache.get(key)
        if rows is None:
            with _quiet_hiphive():
                rows = self._fcm.get_fit_matrix(x)[:, self._cols4]
            if len(self._a4_cache) >= 4096:
                self._a4_cache.clear()
            self._a4_cache[key] = rows
        return rows

    def fit(self, displacements: np.ndarray, forces: np.ndarray, weights: np.ndarray | None = None) -> QuarticModel:
        """Least-squares fit of (1) to ± pairs stored adjacently (see :func:`odd_forces`).

        ``weights`` (one per configuration, equal within a pair) weight the squared residuals.
        """
        from tdphonon.validation.scph import QuarticContraction

        u, f = odd_forces(displacements, forces)
        n3 = 3 * self.natom
        if len(u) * n3 < self.n_parameters:
            raise ValueError(f"{len(u)} ± pairs give {len(u) * n3} equations for {self.n_parameters} parameters")
        a = self.design(u)
        y = f.reshape(-1)
        sw = np.ones(len(u)) if weights is None else np.sqrt(np.asarray(weights, dtype=float)[0::2])
        row_w = np.repeat(sw, n3)
        scale = np.linalg.norm(a, axis=0)
        scale[scale == 0] = 1.0
        coef, *_ = np.linalg.lstsq((a * row_w[:, None]) / scale, y * row_w, rcond=None)
        coef /= scale
        resid = (y - a @ coef) * row_w
        nb = self.projector.n_basis
        fc2 = self.projector.from_coefficients(coef[:nb])
        params = np.zeros(self.cluster_space.n_dofs)
        params[self._cols4] = coef[nb:]
        with _quiet_hiphive():
            self._fcm.parameters = params
            fc4 = self._fcm.get_force_constants().get_fc_dict(order=4)
        quartic = QuarticContraction.from_sorted(self.natom, fc4)
        norm = float(np.sum(row_w**2))
        return QuarticModel(fc2=fc2, quartic=quartic, n_pairs=len(u), n_parameters=self.n_parameters,
                            rmse=float(np.sqrt(np.sum(resid**2) / norm)),
                            force_rms=float(np.sqrt(np.sum((y * row_w) ** 2) / norm)))


_CLUSTER_SPACES: dict[bytes, object] = {}


def _cluster_space(prim, cutoffs: tuple[float, ...], acoustic_sum_rules: bool):
    """hiPhive ``ClusterSpace`` of ``prim``, cached per process (a few seconds to build, read-only after).

    Keyed on the cell, scaled positions, atomic numbers, cutoffs and the sum-rule flag, so the
    temperatures and runs of one material share it.
    """
    from hiphive import ClusterSpace

    h = hashlib.sha1()
    for a in (prim.cell.array, np.round(prim.get_scaled_positions(), 8), prim.numbers, np.asarray(cutoffs)):
        h.update(np.ascontiguousarray(a, dtype=float).tobytes())
    h.update(bytes([acoustic_sum_rules]))
    key = h.digest()
    if key not in _CLUSTER_SPACES:
        if len(_CLUSTER_SPACES) >= 8:
            _CLUSTER_SPACES.clear()
        _CLUSTER_SPACES[key] = ClusterSpace(prim, list(cutoffs), acoustic_sum_rules=acoustic_sum_rules)
    return _CLUSTER_SPACES[key]


def _fc2_design_operator(projector: FCProjector) -> sp.csr_matrix:
    """Sparse S with S[(iα)·n_basis + k, jβ] = Φ_k[i, j, α, β] for the symfc basis vectors Φ_k.

    Then the force of basis vector k for displacement u is −(S u)[(iα)·n_basis + k].
    """
    nb, n = projector.n_basis, projector.natom
    cb = sp.coo_matrix(projector.basis_matrix())  # (9N², nb), rows ((i N + j) 3 + α) 3 + β
    r = cb.row
    b = r % 3
    a = (r // 3) % 3
    j = (r // 9) % n
    i = r // (9 * n)
    rows = (3 * i + a) * nb + cb.col
    cols = 3 * j + b
    return sp.csr_matrix((cb.data, (rows, cols)), shape=(3 * n * nb, 3 * n))
