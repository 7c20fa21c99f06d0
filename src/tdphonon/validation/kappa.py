"""Lattice thermal conductivity κ_L with phono3py (RTA): HA+3ph and SCPH+3ph.

* **HA+3ph**: harmonic Φ₂ and the cubic Φ₃ for every temperature.
* **SCPH+3ph**: at each T the renormalised Φ(T) from :func:`tdphonon.validation.scph.scph` replaces
  Φ₂ (frequencies, group velocities, occupation and the three-phonon matrix elements' eigenvectors
  all come from Φ(T)), with the *same* Φ₃ — the usual SCPH+3ph recipe (e.g. Tadano & Tsuneyuki 2015,
  the paper's validation). So each temperature is its own phono3py run.
* Four-phonon scattering is not computed: no maintained Python package evaluates 4ph scattering
  rates from hiPhive/phono3py IFCs (FourPhonon is a ShengBTE Fortran extension, ALAMODE's
  ``anphon`` needs its own IFC files); see ``docs/validation.md``.

κ is in W m⁻¹ K⁻¹ (Voigt order xx, yy, zz, yz, xz, xy); scattering rates γ (phono3py's imaginary
part of the self-energy, linewidth = 2γ) in THz.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["KappaResult", "kappa_rta", "mesh_convergence"]


@dataclass
class KappaResult:
    """κ_L (RTA) on one q-mesh."""

    temperatures: np.ndarray
    kappa: np.ndarray = field(repr=False)  # (n_T, 6) W/mK
    mesh: tuple[int, int, int]
    frequencies_thz: np.ndarray = field(repr=False)  # (n_q, n_band) irreducible q-points
    gamma_thz: np.ndarray = field(repr=False)  # (n_T, n_q, n_band)
    weights: np.ndarray = field(repr=False)

    @property
    def kappa_average(self) -> np.ndarray:
        """(n_T,) mean of κ_xx, κ_yy, κ_zz (W/mK)."""
        return self.kappa[:, :3].mean(axis=1)

    def to_dict(self) -> dict[str, Any]:
        return {"temperatures": self.temperatures.tolist(), "mesh": list(self.mesh),
                "kappa_wmk": self.kappa.tolist(), "kappa_average_wmk": self.kappa_average.tolist()}


def kappa_rta(unitcell, supercell_matrix, primitive_matrix, fc2: np.ndarray, fc3: np.ndarray,
              mesh: Sequence[int] | float, temperatures: Sequence[float], symprec: float = 1e-5) -> KappaResult:
    """κ_L in the relaxation-time approximation from Φ₂ and Φ₃ on the same supercell.

    Parameters
    ----------
    unitcell
        ``PhonopyAtoms`` of the unit cell.
    supercell_matrix, primitive_matrix
        As for phonopy (the supercell of ``fc2`` and ``fc3``).
    fc2
        (N, N, 3, 3) eV/Å² (full).
    fc3
        (N, N, N, 3, 3, 3) eV/Å³ (full).
    mesh
        q-mesh (three integers) or a length (phono3py's automatic mesh).
    temperatures
        K.
    """
    from phono3py import Phono3py

    ph3 = Phono3py(unitcell, supercell_matrix=supercell_matrix, primitive_matrix=primitive_matrix,
                   symprec=symprec, log_level=0)
    n = len(ph3.supercell)
    fc2 = np.ascontiguousarray(fc2, dtype="double")
    fc3 = np.ascontiguousarray(fc3, dtype="double")
    if fc2.shape != (n, n, 3, 3) or fc3.shape != (n, n, n, 3, 3, 3):
        raise ValueError(f"fc2/fc3 shapes {fc2.shape}/{fc3.shape} do not match the {n}-atom supercell")
    ph3.fc2 = fc2
    ph3.fc3 = fc3
    ph3.mesh_numbers = mesh
    ph3.init_phph_interaction()
    ph3.run_thermal_conductivity(temperatures=np.asarray(temperatures, dtype=float), log_level=0)
    tc = ph3.thermal_conductivity
    return KappaResult(temperatures=np.asarray(tc.temperatures, dtype=float), kappa=np.asarray(tc.kappa[0]),
                       mesh=tuple(int(x) for x in ph3.mesh_numbers), frequencies_thz=np.asarray(tc.frequencies),
                       gamma_thz=np.asarray(tc.gamma[0]), weights=np.asarray(tc.grid_weights))


def mesh_convergence(unitcell, supercell_matrix, primitive_matrix, fc2: np.ndarray, fc3: np.ndarray,
                     meshes: Sequence[Sequence[int]], temperature: float) -> dict[str, Any]:
    """κ at ``temperature`` on increasingly dense meshes and the relative change of the last step."""
    kap = [float(kappa_rta(unitcell, supercell_matrix, primitive_matrix, fc2, fc3, m, [temperature])
                 .kappa_average[0]) for m in meshes]
    rel = abs(kap[-1] - kap[-2]) / abs(kap[-1]) if len(kap) > 1 and kap[-1] else None
    return {"temperature": temperature, "meshes": [list(m) for m in meshes], "kappa_average_wmk": kap,
            "relative_change_last": rel}
