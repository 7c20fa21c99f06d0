"""Analytic potentials with exactly known Hessians, for tests and DFT-reference runs.

:class:`ForceConstantPotential` is a Taylor expansion around a reference supercell:

    E(u) = E₀ + ½ Σ u_ia Φ_ia,jb u_jb + (λ/4) Σ_ia u_ia⁴  [+ Σ_n≥3 (1/n!) Φ⁽ⁿ⁾ u…u]

with u the displacement of each atom from its reference site (minimum image), Φ a supercell force
constant matrix (e.g. from a DFT phonopy data set) and λ an optional on-site quartic coefficient
(eV/Å⁴). Its forces are −Φu − λu³ and its Hessian Φ + 3λ diag(u²), exactly. With λ = 0 it is purely
harmonic, so temperature renormalisation must return Φ unchanged; with λ > 0 the thermal average of
the Hessian over u ~ N(0, Σ) is Φ + 3λ diag(Σ) (the closed-form SCHA result).

Optionally, higher-order IFCs (hiPhive ``ForceConstants`` of the same supercell, e.g. the cubic and
quartic IFCs fitted to DFT data by :func:`tdphonon.validation.ifc.fit_ifcs`) add their Taylor terms,
evaluated exactly and vectorised (:class:`TaylorTerms`: forces, energies and Hessians). The TDPH
engine run on such a potential must reproduce SCPH from the same IFCs (the cubic term averages out
of ⟨∂²V⟩ over a centred Gaussian): the validation branch uses this to separate the method from the
force field, and ``benchmarks/tdph_cost.py`` to measure the estimators against an exact reference.
"""

from __future__ import annotations

import hashlib
import itertools
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms

from tdphonon.errors import StructureError
from tdphonon.potentials import ModelIdentity, Potential, _pkg_version


class TaylorTerms:
    """Terms (1/n!) Σ Φ⁽ⁿ⁾_{x₁…xₙ} u_{x₁}…u_{xₙ} (n ≥ 3) of a Taylor potential, vectorised.

    Built from a hiPhive ``fc_dict`` (sorted atom clusters → (3,)*n tensors) over flat Cartesian
    components ``x = 3·atom + α``. Every distinct atom order of each cluster is expanded (its tensor
    transposed accordingly) and the full symmetric tensor is then stored once per monomial
    u_{x₁}…u_{xₙ} (x₁ ≤ … ≤ xₙ) with weight w = (multiplicity/n!)·Φ, so that

    * energy   E = Σ w Π_k u_{x_k}
    * forces   F = −∂E/∂u (one weighted bincount per factor)
    * Hessian  H = ∂²E/∂u∂u (one per ordered pair of factors)

    all exact (no finite differences).

    Parameters
    ----------
    fc_dict
        ``{(i, j, k[, l]): tensor}`` with sorted atom indices (hiPhive's ``get_fc_dict()``); clusters
        of order < 3 are ignored.
    natom
        Number of atoms of the supercell.
    """

    def __init__(self, fc_dict: dict, natom: int) -> None:
        self.natom = int(natom)
        parts: dict[int, tuple[list, list]] = {}
        for cluster, tensor in fc_dict.items():
            n = len(cluster)
            if n < 3:
                continue
            t = np.asarray(tensor, dtype=float)
            comps = np.indices((3,) * n).reshape(n, -1).T  # (3**n, n) Cartesian indices
            seen = set()
            for perm in itertools.permutations(range(n)):
                atoms = tuple(cluster[k] for k in perm)
                if atoms in seen:
                    continue
                seen.add(atoms)
                parts.setdefault(n, ([], []))[0].append(3 * np.asarray(atoms)[None, :] + comps)
                parts[n][1].append(np.transpose(t, perm).reshape(-1))
        #: order → (components (n, m) of each monomial, weights (m,))
        self.terms: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        for n, (ix, v) in parts.items():
            idx = np.sort(np.concatenate(ix), axis=1)
            val = np.concatenate(v)
            mono, inv = np.unique(idx, axis=0, return_inverse=True)
            # summing the (equal) values of every ordering gives multiplicity·Φ
            w = np.bincount(inv.reshape(-1), weights=val, minlength=len(mono)) / math.factorial(n)
            keep = w != 0.0
            self.terms[n] = (np.ascontiguousarray(mono[keep].T), w[keep])

    @staticmethod
    def _product(u: np.ndarray, comps: np.ndarray, skip: tuple[int, ...]) -> np.ndarray:
        out = np.ones(comps.shape[1])
        for k in range(comps.shape[0]):
            if k not in skip:
                out *= u[comps[k]]
        return out

    def energy_forces(self, u: np.ndarray) -> tuple[float, np.ndarray]:
        """Energy (eV) and forces (3N,) of the terms at displacements ``u`` (3N,) in Å."""
        u = np.asarray(u, dtype=float).reshape(-1)
        n3 = 3 * self.natom
        e, f = 0.0, np.zeros(n3)
        for comps, w in self.terms.values():
            e += float(np.dot(w, self._product(u, comps, ())))
            for k in range(comps.shape[0]):
                f -= np.bincount(comps[k], weights=w * self._product(u, comps, (k,)), minlength=n3)
        return e, f

    def hessian(self, u: np.ndarray) -> np.ndarray:
        """Hessian (3N, 3N) of the terms at displacements ``u`` (3N,), eV/Å²."""
        u = np.asarray(u, dtype=float).reshape(-1)
        n3 = 3 * self.natom
        h = np.zeros(n3 * n3)
        for comps, w in self.terms.values():
            for k, l in itertools.permutations(range(comps.shape[0]), 2):
                h += np.bincount(comps[k] * n3 + comps[l], weights=w * self._product(u, comps, (k, l)),
                                 minlength=n3 * n3)
        return h.reshape(n3, n3)


class ForceConstantPotential(Potential):
    """Harmonic (+ optional on-site quartic) potential around a reference supercell.

    Parameters
    ----------
    reference
        Reference supercell (equilibrium positions); atoms given later are matched to its sites.
    force_constants
        Φ with shape (N, N, 3, 3) in eV/Å² (phonopy's full format) for the reference supercell.
    quartic
        λ in eV/Å⁴ of the on-site term (λ/4)Σu⁴ (0 for a purely harmonic potential).
    energy0
        Energy of the reference structure (eV).
    name
        Name recorded in the model identity.
    anharmonic
        Optional hiPhive ``ForceConstants`` of ``reference`` (same atom order); its terms of order
        ≥ 3 are added (its second order, if any, is ignored: Φ is ``force_constants``), as exact
        :class:`TaylorTerms` (forces, energies and Hessians).
    """

    batch_size = 1024

    def __init__(self, reference: Atoms, force_constants: np.ndarray, quartic: float = 0.0,
                 energy0: float = 0.0, name: str = "harmonic", source: str = "analytic",
                 anharmonic=None) -> None:
        fc = np.asarray(force_constants, dtype=float)
        n = len(reference)
        if fc.shape != (n, n, 3, 3):
            raise ValueError(f"force constants must have shape ({n}, {n}, 3, 3), got {fc.shape}")
        self.reference = reference.copy()
        self.fc = fc
        self.phi = fc.transpose(0, 2, 1, 3).reshape(3 * n, 3 * n)
        self.quartic = float(quartic)
        self.energy0 = float(energy0)
        h = hashlib.sha256(self.phi.tobytes())
        h.update(np.asarray(reference.cell.array).tobytes())
        h.update(np.asarray(reference.get_scaled_positions()).tobytes())
        h.update(f"{self.quartic!r}|{self.energy0!r}".encode())
        self._anharmonic, orders = None, []
        if anharmonic is not None:
            self._anharmonic, orders = self._anharmonic_calculator(anharmonic, reference, h)
        if self.quartic:
            name = f"{name}+quartic({self.quartic:g})"
        if orders:
            name = f"{name}+ifc{''.join(str(o) for o in orders)}"
        ident = ModelIdentity(name=name,
                              kind="analytic", sha256=h.hexdigest(), source=source, package="tdphonon",
                              package_version=_pkg_version("tdphonon"))
        super().__init__(ident, "cpu", sorted(set(reference.get_chemical_symbols())), max_force=1e6)
        self._inv_cell = np.linalg.inv(self.reference.cell.array)

    @staticmethod
    def _anharmonic_calculator(fcs, reference: Atoms, digest) -> tuple[Any, list[int]]:
        """:class:`TaylorTerms` of the order ≥ 3 clusters of hiPhive ``fcs`` (checked against ``reference``)."""
        sc = fcs.supercell
        if (len(sc) != len(reference) or sc.get_chemical_symbols() != reference.get_chemical_symbols()
                or not np.allclose(sc.cell.array, reference.cell.array, atol=1e-6)
                or not np.allclose(sc.positions, reference.positions, atol=1e-4)):
            raise ValueError("the anharmonic force constants belong to another supercell (or atom order)")
        fc_dict = {c: np.asarray(v, dtype=float) for c, v in fcs.get_fc_dict().items() if len(c) >= 3}
        for c in sorted(fc_dict):
            digest.update(repr(c).encode())
            digest.update(fc_dict[c].tobytes())
        orders = sorted({len(c) for c in fc_dict})
        if not fc_dict:
            return None, []
        return TaylorTerms(fc_dict, len(reference)), orders

    # -- constructors ------------------------------------------------------------------------
    @classmethod
    def from_phonopy(cls, phonon, quartic: float = 0.0, name: str | None = None,
                     source: str = "phonopy") -> ForceConstantPotential:
        """Build from a :class:`phonopy.Phonopy` object with (full) force constants."""
        from phonopy.harmonic.force_constants import compact_fc_to_full_fc

        fc = phonon.force_constants
        if fc is None:
            raise ValueError("the phonopy object has no force constants")
        if fc.shape[0] != fc.shape[1]:
            fc = compact_fc_to_full_fc(phonon.primitive, fc)
        sc = phonon.supercell
        ref = Atoms(symbols=sc.symbols, cell=sc.cell, scaled_positions=sc.scaled_positions, pbc=True,
                    masses=sc.masses)
        return cls(ref, fc, quartic=quartic, name=name or f"harmonic[{ref.get_chemical_formula()}]", source=source)

    @classmethod
    def from_phonopy_file(cls, path: str | Path, quartic: float = 0.0) -> ForceConstantPotential:
        """Build from a phonopy yaml (``phonopy_params.yaml`` etc.), producing FCs if needed."""
        import phonopy

        phonon = phonopy.load(str(path), produce_fc=True, log_level=0, is_nac=False)
        return cls.from_phonopy(phonon, quartic=quartic, name=f"harmonic[{Path(path).name}]", source=str(path))

    # -- Potential ---------------------------------------------------------------------------
    def ase_calculator(self):
        from ase.calculators.calculator import Calculator, all_changes

        pot = self

        class _Calc(Calculator):
            implemented_properties = ("energy", "forces", "free_energy")

            def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
                super().calculate(atoms, properties, system_changes)
                e, f = pot._compute([self.atoms])
                self.results = {"energy": float(e[0]), "free_energy": float(e[0]), "forces": f[0]}

        return _Calc()

    def displacements(self, atoms: Atoms) -> tuple[np.ndarray, np.ndarray]:
        """Map ``atoms`` onto the reference sites.

        Returns
        -------
        order, u
            ``order[k]`` is the reference index of atom k, ``u`` (N, 3) the displacements (Å) in
            reference order.
        """
        ref = self.reference
        if len(atoms) != len(ref):
            raise StructureError(atoms.get_chemical_formula(),
                                 f"{len(atoms)} atoms given, reference supercell has {len(ref)}")
        if not np.allclose(atoms.cell.array, ref.cell.array, atol=1e-6):
            raise StructureError(atoms.get_chemical_formula(), "cell differs from the reference supercell")
        frac = atoms.get_positions() @ self._inv_cell
        dfrac = frac[:, None, :] - ref.get_scaled_positions()[None, :, :]
        dfrac -= np.round(dfrac)
        dcart = dfrac @ ref.cell.array
        dist = np.linalg.norm(dcart, axis=-1)
        order = np.argmin(dist, axis=1)
        if len(set(order.tolist())) != len(order):
            raise StructureError(atoms.get_chemical_formula(), "atoms cannot be matched one-to-one to reference sites")
        symbols = np.array(ref.get_chemical_symbols())
        if np.any(symbols[order] != np.array(atoms.get_chemical_symbols())):
            raise StructureError(atoms.get_chemical_formula(), "species do not match the reference sites")
        u = np.zeros((len(atoms), 3))
        u[order] = dcart[np.arange(len(atoms)), order]
        return order, u

    def _compute(self, atoms_list: Sequence[Atoms]):
        energies, forces = [], []
        for a in atoms_list:
            order, u = self.displacements(a)
            uf = u.reshape(-1)
            f_ref = -(self.phi @ uf) - self.quartic * uf**3
            e = self.energy0 + 0.5 * uf @ self.phi @ uf + 0.25 * self.quartic * np.sum(uf**4)
            if self._anharmonic is not None:
                e_anh, f_anh = self._anharmonic.energy_forces(uf)
                f_ref = f_ref + f_anh
                e += e_anh
            energies.append(e)
            forces.append(f_ref.reshape(-1, 3)[order])
        return np.asarray(energies), forces

    def hessians(self, atoms_list: Sequence[Atoms], delta: float = 0.01,
                 labels: Sequence[str] | None = None) -> np.ndarray:
        """Exact Hessians Φ + 3λ diag(u²) [+ the higher-order terms'] in the atom order of each structure.

        ``delta`` is unused (interface compatibility with finite differences).
        """
        out = []
        for a in atoms_list:
            order, u = self.displacements(a)
            h_ref = self.phi + np.diag(3.0 * self.quartic * u.reshape(-1) ** 2)
            if self._anharmonic is not None:
                h_ref = h_ref + self._anharmonic.hessian(u)
            idx = (3 * order[:, None] + np.arange(3)[None, :]).reshape(-1)
            out.append(h_ref[np.ix_(idx, idx)])
        self.hessian_calls += len(atoms_list)
        return np.asarray(out)
