"""Metrics of temperature renormalisation (physics.md §4, paper Eqs. 3–4).

* :func:`r_full` — mean over supercell force-constant elements of |Φᵀ − Φ⁰| / ((|Φ⁰| + |Φᵀ|)/2), on
  the *significant* elements only (see :func:`significant_elements`), and :func:`r_full_noise_floor`
  (the same metric between two independent estimates at the same temperature).
* :func:`r_onsite` / :func:`onsite_report` — |tr Φᵀ_ii − tr Φ⁰_ii| / |tr Φ⁰_ii| per atom, per
  symmetry-distinct site and the material maximum (paper screening threshold: 0.15).
* :func:`frequency_shift` — ‖ω_T − ω_0‖₂ / ‖ω_0‖₂ with signed frequencies (imaginary negative) on
  stated q-points, the three acoustic modes at Γ excluded.
* :func:`harmonic_thermal_properties` — free energy, entropy, heat capacity of a force-constant set
  on a q-mesh (phonopy), and :func:`anharmonicity_score`, a σᴬ-style
  sqrt(⟨(F − F_harm)²⟩ / ⟨F²⟩) with F_harm = −Φ⁰u from the same samples.

All force constants are phonopy full format (N, N, 3, 3) in eV/Å² on the same supercell.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "DEFAULT_REL_THRESHOLD",
    "OnsiteReport",
    "ThermalProperties",
    "anharmonicity_score",
    "drop_gamma_acoustic",
    "equivalent_atoms",
    "frequency_shift",
    "harmonic_thermal_properties",
    "onsite_report",
    "r_full",
    "r_full_noise_floor",
    "r_onsite",
    "significant_elements",
]

#: Elements with |Φ⁰| ≤ DEFAULT_REL_THRESHOLD · max|Φ⁰| are left out of R_full. Symmetry-forbidden
#: elements are exactly zero and far-neighbour ones (≲ 1 % of the on-site block) are dominated by
#: sampling noise, whose relative error |δ|/|Φ| would otherwise dominate the mean.
DEFAULT_REL_THRESHOLD = 1e-2


def _fc(x: np.ndarray) -> np.ndarray:
    a = np.asarray(x, dtype=float)
    if a.ndim != 4 or a.shape[0] != a.shape[1] or a.shape[2:] != (3, 3):
        raise ValueError(f"expected full force constants (N, N, 3, 3), got shape {a.shape}")
    return a


def significant_elements(fc_0: np.ndarray, rel_threshold: float = DEFAULT_REL_THRESHOLD) -> np.ndarray:
    """Boolean mask of elements with |Φ⁰| > ``rel_threshold`` · max|Φ⁰|.

    The mask depends on the reference Φ⁰ only, so that the same elements are compared at every
    temperature and between independent estimates (noise floor).
    """
    f0 = np.abs(_fc(fc_0))
    return f0 > rel_threshold * f0.max()


def r_full(fc_t: np.ndarray, fc_0: np.ndarray, rel_threshold: float = DEFAULT_REL_THRESHOLD,
           mask: np.ndarray | None = None) -> float:
    """R_full = mean over significant elements of |Φᵀ − Φ⁰| / ((|Φ⁰| + |Φᵀ|) / 2) (paper Eq. 3).

    Parameters
    ----------
    fc_t, fc_0
        Renormalised and harmonic force constants.
    rel_threshold
        Elements with |Φ⁰| ≤ rel_threshold · max|Φ⁰| are masked (see :data:`DEFAULT_REL_THRESHOLD`).
    mask
        Explicit boolean mask (overrides ``rel_threshold``), e.g. from the harmonic Φ⁰ when comparing
        two estimates with each other.
    """
    a, b = _fc(fc_t), _fc(fc_0)
    if mask is None:
        mask = significant_elements(b, rel_threshold)
    if not np.any(mask):
        return 0.0
    num = np.abs(a - b)[mask]
    den = 0.5 * (np.abs(a) + np.abs(b))[mask]
    return float(np.mean(num / den))


def r_full_noise_floor(fc_a: np.ndarray, fc_b: np.ndarray, fc_0: np.ndarray,
                       rel_threshold: float = DEFAULT_REL_THRESHOLD) -> float:
    """R_full between two independent estimates at the same T, on the elements significant in Φ⁰.

    An R_full(Φᵀ, Φ⁰) not clearly above this value is statistical noise, not renormalisation.
    """
    return r_full(fc_a, fc_b, mask=significant_elements(fc_0, rel_threshold))


def r_onsite(fc_t: np.ndarray, fc_0: np.ndarray) -> np.ndarray:
    """R_onsite(i) = |tr Φᵀ_ii − tr Φ⁰_ii| / |tr Φ⁰_ii| per supercell atom (paper Eq. 4), shape (N,)."""
    a, b = _fc(fc_t), _fc(fc_0)
    idx = np.arange(a.shape[0])
    ta = np.trace(a[idx, idx], axis1=1, axis2=2)
    tb = np.trace(b[idx, idx], axis1=1, axis2=2)
    return np.abs(ta - tb) / np.abs(tb)


def equivalent_atoms(cell, symprec: float = 1e-5) -> np.ndarray:
    """Symmetry-equivalence representative of each atom (spglib ``equivalent_atoms``).

    ``cell`` is a phonopy ``PhonopyAtoms`` (e.g. ``phonon.supercell``) or ASE ``Atoms``.
    """
    import spglib

    if hasattr(cell, "scaled_positions") and hasattr(cell, "numbers") and not hasattr(cell, "get_pbc"):
        spg_cell = (np.asarray(cell.cell), np.asarray(cell.scaled_positions), np.asarray(cell.numbers))
    else:
        spg_cell = (np.asarray(cell.cell), np.asarray(cell.get_scaled_positions()), np.asarray(cell.numbers))
    ds = spglib.get_symmetry_dataset(spg_cell, symprec=symprec)
    if ds is None:
        return np.arange(len(spg_cell[2]))
    return np.asarray(ds.equivalent_atoms)


@dataclass(frozen=True)
class OnsiteReport:
    """R_onsite per atom, per symmetry-distinct site and the material maximum.

    Attributes
    ----------
    per_atom
        (N,) R_onsite of every supercell atom.
    sites
        One dict per symmetry-distinct site: ``atom`` (representative index), ``symbol``,
        ``multiplicity``, ``r_onsite`` (mean over the equivalent atoms), ``spread`` (max − min over
        them; ~0 for symmetric Φᵀ), ``trace_0`` and ``trace_t`` (mean tr Φ_ii, eV/Å²).
    maximum
        max over atoms (the screening quantity; paper threshold 0.15).
    """

    per_atom: np.ndarray
    sites: tuple[dict, ...]
    maximum: float

    def to_dict(self) -> dict[str, Any]:
        return {"sites": list(self.sites), "maximum": self.maximum}


def onsite_report(fc_t: np.ndarray, fc_0: np.ndarray, cell, symbols: Sequence[str] | None = None,
                  symprec: float = 1e-5, equivalent: np.ndarray | None = None) -> OnsiteReport:
    """R_onsite per atom and per symmetry-distinct site of ``cell`` (the supercell of the FCs).

    ``equivalent`` (representative atom of each atom, e.g. ``phonon.symmetry.get_map_atoms()``)
    skips the spglib call.
    """
    a, b = _fc(fc_t), _fc(fc_0)
    per_atom = r_onsite(a, b)
    eq = np.asarray(equivalent) if equivalent is not None else equivalent_atoms(cell, symprec)
    if symbols is None:
        symbols = list(cell.symbols) if hasattr(cell, "symbols") else cell.get_chemical_symbols()
    idx = np.arange(a.shape[0])
    ta = np.trace(a[idx, idx], axis1=1, axis2=2)
    tb = np.trace(b[idx, idx], axis1=1, axis2=2)
    sites = []
    for rep in sorted(set(eq.tolist())):
        members = np.flatnonzero(eq == rep)
        vals = per_atom[members]
        sites.append({"atom": int(rep), "symbol": str(symbols[rep]), "multiplicity": len(members),
                      "r_onsite": float(vals.mean()), "spread": float(vals.max() - vals.min()),
                      "trace_0": float(tb[members].mean()), "trace_t": float(ta[members].mean())})
    return OnsiteReport(per_atom, tuple(sites), float(per_atom.max()))


def _is_gamma(q: np.ndarray, tol: float = 1e-8) -> bool:
    q = np.asarray(q, dtype=float)
    return bool(np.all(np.abs(q - np.rint(q)) < tol))


def drop_gamma_acoustic(freqs: np.ndarray, qpoints: np.ndarray | None) -> np.ndarray:
    f = np.asarray(freqs, dtype=float)
    if f.ndim == 1:
        f = f[None]
    keep = np.ones(f.shape, dtype=bool)
    if qpoints is not None:
        for k, q in enumerate(np.asarray(qpoints, dtype=float).reshape(len(f), 3)):
            if _is_gamma(q):
                keep[k, np.argsort(np.abs(f[k]))[:3]] = False
    return f[keep]


def frequency_shift(freqs_t: np.ndarray, freqs_0: np.ndarray, qpoints: np.ndarray | None = None,
                    exclude_gamma_acoustic: bool = True) -> float:
    """Relative L2 frequency shift ‖ω_T − ω_0‖₂ / ‖ω_0‖₂.

    Parameters
    ----------
    freqs_t, freqs_0
        (n_q, n_bands) signed frequencies (imaginary negative), each row sorted ascending, on the
        same q-points.
    qpoints
        (n_q, 3) q-points (reduced). With ``exclude_gamma_acoustic`` the three modes of smallest |ω|
        at each Γ point are left out of both sets (they are zero by the sum rule).
    """
    a = np.asarray(freqs_t, dtype=float)
    b = np.asarray(freqs_0, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"frequency arrays differ in shape: {a.shape} vs {b.shape}")
    if exclude_gamma_acoustic and qpoints is not None:
        a = drop_gamma_acoustic(a, qpoints)
        b = drop_gamma_acoustic(b, qpoints)
    den = np.linalg.norm(b)
    if den == 0:
        raise ValueError("reference frequencies are all zero")
    return float(np.linalg.norm(a - b) / den)


@dataclass(frozen=True, eq=False)
class ThermalProperties:
    """Harmonic thermodynamics of one force-constant set (phonopy, per mole of primitive cells).

    Attributes
    ----------
    temperatures
        K.
    free_energy
        Helmholtz free energy of the phonons, kJ/mol.
    entropy, heat_capacity
        J/(K mol).
    mesh
        q-mesh used.
    n_imaginary
        Number of mesh modes below −0.01 THz (phonopy leaves imaginary modes out of the sums).
    """

    temperatures: np.ndarray
    free_energy: np.ndarray
    entropy: np.ndarray
    heat_capacity: np.ndarray
    mesh: tuple[int, int, int]
    n_imaginary: int

    def to_dict(self) -> dict[str, Any]:
        d = {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in dataclasses.asdict(self).items()}
        d["units"] = {"free_energy": "kJ/mol", "entropy": "J/K/mol", "heat_capacity": "J/K/mol"}
        return d


def harmonic_thermal_properties(phonon, force_constants: np.ndarray | None, temperatures: Sequence[float],
                                mesh: Sequence[int] | float = (12, 12, 12)) -> ThermalProperties:
    """F, S, C_v of the harmonic model with force constants Φ (e.g. Φ(T)) on a q-mesh.

    Parameters
    ----------
    phonon
        Phonopy object giving the structure (its own force constants are not modified).
    force_constants
        Full (N, N, 3, 3) force constants; ``None`` uses ``phonon.force_constants``.
    temperatures
        K.
    mesh
        Mesh numbers or a length (phonopy semantics); Γ-centred so that the point group is kept.
    """
    from tdphonon.renormalize import phonopy_with_force_constants

    ph = phonopy_with_force_constants(phonon, force_constants) if force_constants is not None else phonon
    ph.run_mesh(mesh if np.ndim(mesh) == 0 else list(mesh), is_gamma_center=True)
    freqs = ph.mesh.frequencies
    t = np.asarray(list(temperatures), dtype=float)
    ph.run_thermal_properties(temperatures=t)
    temps, free_energy, entropy, heat_capacity = ph.thermal_properties.thermal_properties
    return ThermalProperties(np.asarray(temps), np.asarray(free_energy), np.asarray(entropy), np.asarray(heat_capacity),
                             tuple(int(x) for x in ph.mesh.mesh_numbers), int(np.sum(freqs < -0.01)))


def anharmonicity_score(displacements: np.ndarray, forces: np.ndarray, fc_0: np.ndarray) -> float:
    """σᴬ-style score sqrt(Σ (F − F_harm)² / Σ F²) with F_harm = −Φ⁰u, over all samples and atoms.

    0 for a harmonic potential with force constants Φ⁰; ≈ 0.1–0.3 for typical solids at 300 K,
    ≳ 1 when the harmonic model is meaningless.
    """
    u = np.asarray(displacements, dtype=float)
    f = np.asarray(forces, dtype=float)
    if u.ndim == 2:
        u, f = u[None], f[None]
    n = u.shape[1]
    phi = _fc(fc_0).transpose(0, 2, 1, 3).reshape(3 * n, 3 * n)
    fh = -(u.reshape(len(u), -1) @ phi.T)
    den = float(np.sum(f.reshape(len(f), -1) ** 2))
    if den == 0:
        return 0.0
    return float(np.sqrt(np.sum((f.reshape(len(f), -1) - fh) ** 2) / den))
