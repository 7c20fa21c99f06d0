"""Harmonic + anharmonic interatomic force constants fitted to force–displacement data (hiPhive).

The validation branch fits 2nd-, 3rd- and 4th-order IFCs to (DFT or reference-calculator) forces
of displaced supercells, with cutoffs given as **neighbour shells** as in the paper (3rd order up
to the 4th shell, 4th order up to the 2nd). The fit uses hiPhive's symmetry-adapted cluster space
(space group, permutation and translational/rotational sum rules built in) and trainstation's
least squares or LASSO, with a hold-out RMSE and a k-fold cross-validation score.

Units: Å, eV; IFC of order n in eV/Åⁿ.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from ase import Atoms

__all__ = ["IFCFit", "fit_ifcs", "shell_cutoffs", "shell_distances"]


def shell_distances(prim: Atoms, max_distance: float = 12.0, tol: float = 1e-3) -> np.ndarray:
    """Distinct interatomic distances (Å, ascending) of the crystal up to ``max_distance``."""
    from ase.neighborlist import neighbor_list

    d = np.sort(neighbor_list("d", prim, max_distance))
    shells: list[float] = []
    for x in d:
        if not shells or x - shells[-1] > tol:
            shells.append(float(x))
    return np.asarray(shells)


def shell_cutoffs(prim: Atoms, shells: Mapping[int, int] | Sequence[int]) -> list[float]:
    """hiPhive cutoffs (Å) for orders 2, 3, ... from neighbour-shell counts.

    ``shells``: ``{2: n2, 3: n3, 4: n4}`` or ``[n2, n3, n4]``; an order with ``n`` shells gets a
    cutoff halfway between the n-th and (n+1)-th distinct neighbour distance, so that the n-th shell
    is in and the next one out whatever the rounding.
    """
    counts = [shells[k] for k in sorted(shells)] if isinstance(shells, Mapping) else list(shells)
    dist = shell_distances(prim, max_distance=max(12.0, 4.0 * float(np.cbrt(prim.get_volume()))))
    out = []
    for n in counts:
        if n < 1 or n >= len(dist):
            raise ValueError(f"{n} neighbour shells requested; {len(dist) - 1} available")
        out.append(0.5 * (dist[n - 1] + dist[n]))
    return out


@dataclass
class IFCFit:
    """Fitted IFCs with the fit statistics.

    Attributes
    ----------
    potential
        hiPhive ``ForceConstantPotential`` (IFCs of any supercell: ``get_force_constants(atoms)``).
    cutoffs
        Å per order (2, 3, 4, ...).
    shells
        Neighbour shells per order, when given that way.
    n_parameters, n_structures
        Size of the fit.
    rmse_train, rmse_test
        Force RMSE (eV/Å) on the training part and on the hold-out part.
    cv_rmse
        k-fold cross-validation RMSE (eV/Å) of the same method (None: not computed).
    r2_test
        R² of the hold-out forces.
    method
        trainstation fit method (``least-squares``, ``lasso``, ...).
    """

    potential: Any
    cutoffs: list[float]
    shells: dict[int, int] | None
    n_parameters: int
    n_structures: int
    rmse_train: float
    rmse_test: float | None
    cv_rmse: float | None
    r2_test: float | None
    method: str
    parameters: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0))
    fit_orders: list[int] | None = None

    def force_constants(self, supercell: Atoms):
        """hiPhive ``ForceConstants`` of ``supercell`` (orders 2, 3, 4 as fitted)."""
        return self.potential.get_force_constants(supercell)

    def fc2(self, supercell: Atoms) -> np.ndarray:
        """(N, N, 3, 3) harmonic IFCs of ``supercell`` (phonopy layout), eV/Å²."""
        return self.force_constants(supercell).get_fc_array(order=2)

    def to_dict(self) -> dict[str, Any]:
        return {"cutoffs": self.cutoffs, "shells": self.shells, "n_parameters": self.n_parameters,
                "n_structures": self.n_structures, "rmse_train": self.rmse_train, "rmse_test": self.rmse_test,
                "cv_rmse": self.cv_rmse, "r2_test": self.r2_test, "method": self.method,
                "fit_orders": self.fit_orders}


def fit_ifcs(prim: Atoms, supercells: Sequence[Atoms], forces: Sequence[np.ndarray], ideal: Atoms,
             cutoffs: Sequence[float] | None = None, shells: Mapping[int, int] | None = None,
             method: str = "least-squares", train_fraction: float = 0.9, cv_splits: int = 5, seed: int = 0,
             fit_orders: Sequence[int] | None = None, **fit_kwargs) -> IFCFit:
    """Fit IFCs to forces of displaced supercells (hiPhive cluster space + trainstation).

    Parameters
    ----------
    prim
        Primitive cell (ASE).
    supercells
        Displaced supercells (same atom order as ``ideal``).
    forces
        (N, 3) forces of each displaced supercell, eV/Å.
    ideal
        The undisplaced supercell.
    cutoffs, shells
        Cutoffs in Å per order starting at 2 (hiPhive convention), or neighbour-shell counts
        ``{2: n2, 3: n3, 4: n4}`` (:func:`shell_cutoffs`).
    method
        trainstation method: ``least-squares`` (default), ``lasso``, ``ardr``, ``rfe``, ...
    train_fraction, cv_splits, seed
        Hold-out split and k-fold cross-validation (``cv_splits`` < 2: skipped).
    fit_orders
        Orders whose parameters are fitted; the others are fixed to zero (e.g. ``[3, 4]`` to fit the
        anharmonic IFCs to residual forces F + Φ₂u without a second-order term absorbing the thermal
        renormalisation of large-amplitude data). Default: every order of the cluster space.
    """
    from hiphive import ClusterSpace, ForceConstantPotential, StructureContainer
    from hiphive.utilities import prepare_structure
    from trainstation import CrossValidationEstimator, Optimizer

    if (cutoffs is None) == (shells is None):
        raise ValueError("give either cutoffs (Å) or shells (neighbour-shell counts per order)")
    if len(supercells) != len(forces) or not supercells:
        raise ValueError(f"{len(supercells)} structures but {len(forces)} force sets")
    cut = list(cutoffs) if cutoffs is not None else shell_cutoffs(prim, shells)
    cs = ClusterSpace(prim, cut)
    sc = StructureContainer(cs)
    for atoms, f in zip(supercells, forces, strict=True):
        a = atoms.copy()
        f = np.asarray(f, dtype=float)
        if f.shape != (len(a), 3) or not np.all(np.isfinite(f)):
            raise ValueError(f"forces must be finite with shape ({len(a)}, 3)")
        a.new_array("forces", f)
        sc.add_structure(prepare_structure(a, ideal, calc=None, check_permutation=True))
    A, y = sc.get_fit_data()
    cols = np.arange(A.shape[1])
    if fit_orders is not None:
        cols = np.array(sorted(i for o in fit_orders for i in cs.get_parameter_indices(int(o))), dtype=int)
        if cols.size == 0:
            raise ValueError(f"no parameters of orders {list(fit_orders)} in the cluster space")
    opt = Optimizer((A[:, cols], y), fit_method=method, train_size=train_fraction, seed=seed, **fit_kwargs)
    opt.train()
    summ = opt.summary
    cv = None
    if cv_splits >= 2 and len(supercells) >= cv_splits:
        cve = CrossValidationEstimator((A[:, cols], y), fit_method=method, n_splits=cv_splits, seed=seed,
                                       **fit_kwargs)
        cve.validate()
        cv = float(cve.rmse_validation)
    params = np.zeros(A.shape[1])
    params[cols] = opt.parameters
    fcp = ForceConstantPotential(cs, params)
    return IFCFit(potential=fcp, cutoffs=[float(c) for c in cut], shells=dict(shells) if shells else None,
                  n_parameters=int(cols.size), n_structures=len(supercells), rmse_train=float(summ["rmse_train"]),
                  rmse_test=None if summ.get("rmse_test") is None else float(summ["rmse_test"]),
                  cv_rmse=cv, r2_test=None if summ.get("R2_test") is None else float(summ["R2_test"]),
                  method=method, parameters=params, fit_orders=None if fit_orders is None else list(fit_orders))
