"""Validation-branch physics: anharmonic IFC fitting (hiPhive) and q-space SCPH from quartic IFCs."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from ase.build import bulk

from _emt import emt_phonon, rattled
from tdphonon.sampling import FCProjector, fc_to_matrix, matrix_to_fc
from tdphonon.validation.ifc import fit_ifcs, shell_cutoffs
from tdphonon.validation.scph import QuarticContraction, scph

HBAR_EV_S = 6.582119569e-16
KB_EV = 8.617333262e-5
AMU_EV_S2_A2 = 1.66053906660e-27 / 1.602176634e-19 * 1e-20  # 1 amu in eV s²/Å²


def _emt_phonon(supercell=(2, 2, 2)):
    """Cu (fcc, EMT) conventional cell: phonopy object with symmetrised Φ₂ and its projector."""
    from phonopy.structure.atoms import PhonopyAtoms

    cu = bulk("Cu", "fcc", a=3.61, cubic=True)
    unit = PhonopyAtoms(symbols=cu.get_chemical_symbols(), cell=cu.cell[:], scaled_positions=cu.get_scaled_positions())
    ph = emt_phonon(unit, np.diag(supercell))
    proj = FCProjector.from_phonopy(ph)
    fc0 = proj.project(ph.force_constants)
    ph.force_constants = np.ascontiguousarray(fc0)
    return ph, proj, fc0


def _gamma_covariance(fc: np.ndarray, masses: np.ndarray, temperature: float) -> np.ndarray:
    """Σ(T) from the supercell Γ modes by a plain eigendecomposition (independent of tdphonon.sampling).

    The three zero modes (uniform translations) are removed.
    """
    m = np.repeat(masses, 3)
    d = fc_to_matrix(fc) / np.sqrt(np.outer(m, m))  # eV/Å²/amu
    w2, e = np.linalg.eigh(0.5 * (d + d.T))
    keep = np.argsort(np.abs(w2))[3:]
    w = np.sqrt(w2[keep] / AMU_EV_S2_A2)  # rad/s
    x = HBAR_EV_S * w / (2 * KB_EV * temperature)
    amp2 = HBAR_EV_S / (2 * w) / np.tanh(x) / AMU_EV_S2_A2  # ⟨Q²⟩ in amu Å²
    v = e[:, keep] / np.sqrt(m)[:, None]
    return (v * amp2) @ v.T


# --------------------------------------------------------------------------------------------
# SCPH
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("project", [False, True])
def test_scph_onsite_quartic_solves_the_closed_form(project):
    """Φ₄ = 6λ on site ⇒ SCPH must solve Φ = Φ₂ + 3λ diag Σ(Φ) (projected onto the sum-rule subspace if asked)."""
    ph, proj, fc0 = _emt_phonon()
    lam, t = 40.0, 300.0
    res = scph(ph.supercell, ph.primitive, fc0, QuarticContraction.onsite(len(ph.supercell), lam), t,
               mixing=0.6, tol_thz=1e-7, projector=proj if project else None)
    assert res.converged and res.n_iterations < 100
    # fixed-point residual with Σ from an independent supercell-Γ eigendecomposition
    cov = _gamma_covariance(res.force_constants, ph.supercell.masses, t) if project else None
    if project:
        target = proj.project(fc0 + 3 * lam * matrix_to_fc(np.diag(np.diag(cov))))
        assert np.abs(res.force_constants - target).max() < 1e-6
        assert np.abs(res.force_constants.sum(axis=1)).max() < 1e-9  # sum rule kept
    else:  # unprojected: translations are not zero modes any more; check through tdphonon's own Σ
        from tdphonon.sampling import normal_modes, thermal_covariance

        c = thermal_covariance(normal_modes(ph.supercell, res.force_constants, ph.primitive), t).matrix
        target = fc0 + 3 * lam * matrix_to_fc(np.diag(np.diag(c)))
        assert np.abs(res.force_constants - target).max() < 1e-6
    # the quartic term stiffens: every optical/acoustic frequency goes up, on-site Φ by 3λ⟨u²⟩
    assert (res.frequencies_thz[0, 3:] > res.harmonic_frequencies_thz[0, 3:]).all()
    assert np.all(res.frequencies_thz.max() > res.harmonic_frequencies_thz.max())


def test_scph_adaptive_mixing_converges_a_double_well_that_fixed_mixing_cycles():
    """Φ₂ = −Φ_Cu (every mode imaginary) held up by a strong on-site quartic term (λ = 1000 eV/Å⁴).

    Near the fixed point of Φ = Φ₂ + 3λ diag Σ(Φ) the map's slope, −(ω² − ω₂²)/ω², is below
    1 − 2/α for α = 0.5: fixed mixing settles into a cycle. Halving α after an overshoot reaches the
    (stable) fixed point; a run that never overshoots is bitwise the same with and without it.
    """
    from tdphonon.sampling import ModeAmplitudePolicy, normal_modes, thermal_covariance

    ph, proj, fc0 = _emt_phonon()
    t, lam, well = 300.0, 1000.0, -fc0
    policy = ModeAmplitudePolicy(kind="abs", threshold_thz=1.0)
    q = QuarticContraction.onsite(len(ph.supercell), lam)
    kw = dict(mixing=0.5, tol_thz=1e-6, max_iterations=300, projector=proj, policy=policy)
    plain = scph(ph.supercell, ph.primitive, well, q, t, adaptive_mixing=False, **kw)
    assert not plain.converged and min(plain.history[-20:]) > 0.1 and set(plain.mixing) == {0.5}
    res = scph(ph.supercell, ph.primitive, well, q, t, **kw)
    assert res.converged and res.n_iterations < 100, res.history[-5:]
    assert res.mixing[0] == 0.5 and 0.05 <= min(res.mixing) < 0.5
    assert all(b in (a, max(a / 2, 0.05)) for a, b in itertools.pairwise(res.mixing))  # only ever halved
    assert res.to_dict()["mixing"] == res.mixing
    assert np.sort(res.frequencies_thz.ravel())[3] > 1.0  # stable: the policy plays no part at the fixed point
    cov = thermal_covariance(normal_modes(ph.supercell, res.force_constants, ph.primitive), t, policy=policy)
    target = proj.project(well + 3 * lam * matrix_to_fc(np.diag(np.diag(cov.matrix))))
    assert np.abs(res.force_constants - target).max() < 1e-4 * np.abs(well).max()
    # no overshoot (a shallower well): adaptive mixing changes nothing
    q0 = QuarticContraction.onsite(len(ph.supercell), 500.0)
    a, b = (scph(ph.supercell, ph.primitive, -0.3 * fc0, q0, t, adaptive_mixing=ad, **kw) for ad in (True, False))
    assert a.converged and set(a.mixing) == {0.5} and np.array_equal(a.force_constants, b.force_constants)
    with pytest.raises(ValueError, match="min_mixing"):
        scph(ph.supercell, ph.primitive, well, q, t, mixing=0.5, min_mixing=0.6)


def test_scph_zero_quartic_and_temperature_trend():
    ph, _, fc0 = _emt_phonon()
    none = scph(ph.supercell, ph.primitive, fc0, QuarticContraction.onsite(len(ph.supercell), 0.0), 300.0)
    assert none.converged and np.abs(none.force_constants - fc0).max() == 0.0
    q = QuarticContraction.onsite(len(ph.supercell), 20.0)
    lo = scph(ph.supercell, ph.primitive, fc0, q, 100.0, tol_thz=1e-6)
    hi = scph(ph.supercell, ph.primitive, fc0, q, 600.0, tol_thz=1e-6, initial=lo.force_constants)
    assert hi.frequencies_thz.max() > lo.frequencies_thz.max() > none.frequencies_thz.max()


def test_quartic_contraction_expands_sorted_clusters():
    """from_sorted (hiPhive storage) equals the dense contraction with the fully symmetric Φ₄."""
    rng = np.random.default_rng(0)
    n = 3
    dense = np.zeros((n, n, n, n, 3, 3, 3, 3))
    sorted_clusters = {}
    import itertools

    for cl in [(0, 0, 0, 0), (0, 0, 1, 2), (0, 1, 1, 1), (1, 1, 2, 2), (0, 1, 2, 2)]:
        f = rng.normal(size=(3, 3, 3, 3))
        f = sum(f.transpose(p) for p in itertools.permutations(range(4))) / 24  # Φ₄ symmetric in (atom, α) pairs
        sorted_clusters[cl] = f
        for p in set(itertools.permutations(range(4))):
            key = tuple(cl[i] for i in p)
            dense[key] = f.transpose(p)
    s = rng.normal(size=(3 * n, 3 * n))
    s = s @ s.T
    want = 0.5 * np.einsum("ijklabcd,kcld->iajb", dense, s.reshape(n, 3, n, 3)).reshape(3 * n, 3 * n)
    got = QuarticContraction.from_sorted(n, sorted_clusters)(s)
    np.testing.assert_allclose(got, want, atol=1e-12)
    # the vectorised expansion is exactly the per-tuple one: every distinct ordered tuple once, with the
    # block of its first permutation (visible with blocks that are not symmetric), pairs skipped
    from tdphonon.validation.scph import _PERMUTATIONS

    raw = {cl: rng.normal(size=(3, 3, 3, 3)) for cl in sorted_clusters} | {(0, 1): np.zeros((3, 3))}
    full = {}
    for cl, f in raw.items():
        for p in _PERMUTATIONS if len(cl) == 4 else ():
            full.setdefault(tuple(cl[i] for i in p), f.transpose(p))
    exp, vec = QuarticContraction(n, full), QuarticContraction.from_sorted(n, raw)
    assert vec.n_clusters == exp.n_clusters == len(full) < 24 * 5
    assert (vec.matrix != exp.matrix).nnz == 0 and vec.matrix.nnz == exp.matrix.nnz == 81 * len(full)
    assert QuarticContraction(n, {}).matrix.nnz == 0 and QuarticContraction.from_sorted(n, {}).n_clusters == 0


# --------------------------------------------------------------------------------------------
# IFC fitting
# --------------------------------------------------------------------------------------------
def test_shell_cutoffs_rocksalt():
    nacl = bulk("NaCl", "rocksalt", a=5.64)
    c = shell_cutoffs(nacl, {2: 1, 3: 2, 4: 3})
    d1, d2, d3, d4 = 5.64 / 2, 5.64 / np.sqrt(2), 5.64 * np.sqrt(3) / 2, 5.64
    np.testing.assert_allclose(c, [(d1 + d2) / 2, (d2 + d3) / 2, (d3 + d4) / 2])
    with pytest.raises(ValueError, match="shells"):
        shell_cutoffs(nacl, {2: 0})


@pytest.mark.parametrize("fit_orders", [None, [3, 4]])
def test_fit_recovers_known_anharmonic_ifcs(fit_orders):
    """Forces of a 2nd+3rd+4th-order Taylor potential with known IFCs are fitted back exactly.

    ``fit_orders=[3, 4]``: data without a second-order term, the second order fixed to zero.
    """
    from hiphive import ClusterSpace, ForceConstantPotential
    from hiphive.calculators import ForceConstantCalculator

    prim = bulk("NaCl", "rocksalt", a=5.64)
    ideal = prim.repeat(3)
    shells = {2: 2, 3: 1, 4: 1}
    cs = ClusterSpace(prim, shell_cutoffs(prim, shells))
    rng = np.random.default_rng(3)
    true = rng.normal(scale=0.5, size=cs.n_dofs)
    if fit_orders:
        true[cs.get_parameter_indices(2)] = 0.0
    fcs = ForceConstantPotential(cs, true).get_force_constants(ideal)
    structures, forces = rattled(ideal, 8, 0.05, rng, ForceConstantCalculator(fcs))
    fit = fit_ifcs(prim, structures, forces, ideal, shells=shells, cv_splits=4, fit_orders=fit_orders)
    np.testing.assert_allclose(fit.parameters, true, atol=1e-8)
    n_free = cs.n_dofs - (len(cs.get_parameter_indices(2)) if fit_orders else 0)
    assert fit.rmse_train < 1e-8 and fit.cv_rmse < 1e-8 and fit.n_parameters == n_free
    assert fit.fit_orders == fit_orders
    np.testing.assert_allclose(fit.fc2(ideal), fcs.get_fc_array(order=2), atol=1e-8)
    # its quartic part plugs straight into SCPH
    q = QuarticContraction.from_hiphive(fit.force_constants(ideal))
    assert q.n_clusters > 0 and q.n_atoms == len(ideal)
    with pytest.raises(ValueError, match="either cutoffs"):
        fit_ifcs(prim, structures, forces, ideal)

def test_taylor_potential_with_fitted_ifcs_reproduces_the_ifc_forces():
    """ForceConstantPotential(Φ₂ + hiPhive Φ₃/Φ₄): hiPhive's own forces and energies exactly, any atom
    order, any translation; exact Hessians = finite differences of those forces."""
    from ase.build import bulk
    from hiphive import ClusterSpace
    from hiphive import ForceConstantPotential as HiphiveFCP
    from hiphive.calculators import ForceConstantCalculator

    from tdphonon.analytic import ForceConstantPotential
    from tdphonon.potentials import fd_hessians

    prim = bulk("NaCl", "rocksalt", a=5.64)
    ideal = prim.repeat(3)
    cs = ClusterSpace(prim, shell_cutoffs(prim, {2: 2, 3: 1, 4: 1}))
    rng = np.random.default_rng(5)
    fcs = HiphiveFCP(cs, rng.normal(scale=0.5, size=cs.n_dofs)).get_force_constants(ideal)
    pot = ForceConstantPotential(ideal, fcs.get_fc_array(order=2), anharmonic=fcs, name="NaCl")
    assert pot.identity.name == "NaCl+ifc34"
    assert pot.identity.sha256 != ForceConstantPotential(ideal, fcs.get_fc_array(order=2)).identity.sha256
    calc = ForceConstantCalculator(fcs)
    for _ in range(3):
        a = ideal.copy()
        a.positions += rng.normal(scale=0.1, size=a.positions.shape)
        a.calc = calc
        perm = rng.permutation(len(a))
        b = a[perm]
        b.translate(b.cell[0])  # same configuration, one lattice vector away
        e, f = pot.energies_and_forces([b])
        np.testing.assert_allclose(f[0], a.get_forces()[perm], atol=1e-10)
        assert abs(e[0] - a.get_potential_energy()) < 1e-10
    # exact Hessians (Φ₂ + Φ₃u + ½Φ₄uu) = central differences of the forces up to O(δ²)
    h = pot.hessians([b])[0]
    h_fd = fd_hessians(pot, [b], delta=1e-4)[0]
    np.testing.assert_allclose(h, h_fd, atol=1e-6 * np.abs(h).max())
    idx = (3 * perm[:, None] + np.arange(3)).reshape(-1)  # b's atom k is reference atom perm[k]
    assert np.abs(h - pot.phi[np.ix_(idx, idx)]).max() > 1.0  # the anharmonic part is there
    shuffled = ideal[rng.permutation(len(ideal))]
    with pytest.raises(ValueError, match="another supercell"):
        ForceConstantPotential(shuffled, fcs.get_fc_array(order=2), anharmonic=fcs)


@pytest.mark.slow
def test_tdph_engine_on_a_quartic_ifc_potential_reproduces_scph():
    """The stochastic engine (self-consistent force fit) and q-space SCPH agree on the same Φ₂+Φ₃+Φ₄.

    EMT Cu's Φ₃/Φ₄ fitted by hiPhive define an exact Taylor potential; its cubic term averages out
    of ⟨∂²V⟩ over a centred Gaussian, so the TDPH fixed point is the SCPH one on the same
    (commensurate) q-points. This separates the method from the force field in the SrTiO3
    validation. The test fails if the engine's Σ, sampling or fit is off (shift 0.6 THz at 800 K).
    """
    from ase import Atoms

    from tdphonon.analytic import ForceConstantPotential
    from tdphonon.renormalize import TDPHSettings, renormalize
    from tdphonon.structures import phonopy_atoms_to_ase
    from tdphonon.validation.scph import commensurate_frequencies

    ph, proj, fc0 = _emt_phonon()
    sc = ph.supercell
    ideal = Atoms(sc.symbols, cell=sc.cell, scaled_positions=sc.scaled_positions, pbc=True)
    structures, forces = rattled(ideal, 12, 0.08, np.random.default_rng(0))
    resid = [f + np.einsum("ijab,jb->ia", fc0, s.positions - ideal.positions)
             for f, s in zip(forces, structures, strict=True)]
    fit = fit_ifcs(phonopy_atoms_to_ase(ph.primitive), structures, resid, ideal, cutoffs=[3.0, 3.0, 3.0],
                   cv_splits=0, fit_orders=[3, 4])
    fcs = fit.force_constants(ideal)
    ref = scph(sc, ph.primitive, fc0, QuarticContraction.from_hiphive(fcs), 800.0, projector=proj, tol_thz=1e-5)
    assert ref.converged
    shift = np.abs(ref.frequencies_thz - ref.harmonic_frequencies_thz).max()
    assert shift > 0.4
    pot = ForceConstantPotential(ideal, fc0, anharmonic=fcs, name="Cu-EMT")
    st = TDPHSettings(estimator="force_fit", n_configurations=32, self_consistent=True, reuse_samples=True,
                      tol_thz=0.02, max_iterations=20, seed=1)
    res = renormalize(ph, pot, [800.0], st, "Cu", projector=proj)[0]
    assert res.converged
    f_tdph = commensurate_frequencies(sc, ph.primitive, res.force_constants)[1]
    dev = np.abs(f_tdph - ref.frequencies_thz).max()
    assert dev <= 4 * np.nanmax(res.frequency_error) + 0.02, dev
    assert dev < 0.15 * shift


# --------------------------------------------------------------------------------------------
# κ_L (phono3py RTA)
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cu_ifcs():
    """EMT Cu: 2nd+3rd-order IFCs fitted (hiPhive) on phono3py's own 3x3x3 supercell of the primitive cell."""
    from ase import Atoms
    from phono3py import Phono3py
    from phonopy.structure.atoms import PhonopyAtoms

    prim = bulk("Cu", "fcc", a=3.61)
    unit = PhonopyAtoms(symbols=["Cu"], cell=prim.cell[:], scaled_positions=prim.get_scaled_positions())
    ph3 = Phono3py(unit, supercell_matrix=np.diag([3, 3, 3]), primitive_matrix="P", log_level=0)
    sc = ph3.supercell
    ideal = Atoms(sc.symbols, cell=sc.cell, scaled_positions=sc.scaled_positions, pbc=True)
    structures, forces = rattled(ideal, 12, 0.04, np.random.default_rng(0))
    fit = fit_ifcs(prim, structures, forces, ideal, cutoffs=[3.0, 3.0], cv_splits=0)  # nearest neighbours
    fcs = fit.force_constants(ideal)
    return unit, fcs.get_fc_array(order=2), fcs.get_fc_array(order=3), fit


def test_kappa_rta_scales_with_cubic_ifcs_and_temperature(cu_ifcs):
    from tdphonon.validation.kappa import kappa_rta

    unit, fc2, fc3, fit = cu_ifcs
    assert fit.rmse_test < 0.05  # EMT forces are well described by 2nd+3rd order at 0.04 Å
    base = kappa_rta(unit, np.diag([3, 3, 3]), "P", fc2, fc3, [6, 6, 6], [300.0, 600.0])
    k = base.kappa_average
    assert np.all(k > 0) and np.all(np.isfinite(k))
    np.testing.assert_allclose(base.kappa[:, 0], base.kappa[:, 1], rtol=1e-8)  # cubic: isotropic
    assert np.abs(base.kappa[:, 3:]).max() < 1e-8 * k.max()
    # RTA: γ ∝ |Φ₃|² exactly, so doubling Φ₃ quarters κ at fixed Φ₂
    double = kappa_rta(unit, np.diag([3, 3, 3]), "P", fc2, 2 * fc3, [6, 6, 6], [300.0, 600.0])
    np.testing.assert_allclose(double.gamma_thz, 4 * base.gamma_thz, rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(double.kappa_average, base.kappa_average / 4, rtol=1e-8)
    # high-T three-phonon scattering: γ ∝ T, so κ(600 K) ≈ κ(300 K) / 2 (EMT Cu: Θ_D ≈ 300 K)
    assert 0.4 < k[1] / k[0] < 0.6
    with pytest.raises(ValueError, match="do not match"):
        kappa_rta(unit, np.diag([2, 2, 2]), "P", fc2, fc3, [4, 4, 4], [300.0])


# --------------------------------------------------------------------------------------------
# the chain end to end with a cheap real reference calculator (EMT)
# --------------------------------------------------------------------------------------------
def test_validation_chain_end_to_end_with_emt():
    import json

    from pymatgen.core import Structure

    from tdphonon.validation.calculators import reference_potential
    from tdphonon.validation.pipeline import ValidationSettings, run_validation

    cu = Structure.from_spacegroup("Fm-3m", [[3.6, 0, 0], [0, 3.6, 0], [0, 0, 3.6]], ["Cu"], [[0, 0, 0]])
    settings = ValidationSettings(supercell_matrix=((-2, 2, 2), (2, -2, 2), (2, 2, -2)), n_configurations=12,
                                  shells=((2, 1), (3, 1), (4, 1)), temperatures=(300.0, 900.0),
                                  kappa_mesh=(6, 6, 6), kappa_convergence_meshes=((4, 4, 4), (6, 6, 6)))
    res = run_validation(cu.get_primitive_structure(), reference_potential("emt"), settings, label="Cu")
    s = json.loads(json.dumps(res.summary()))  # serialisable
    assert s["calculator"]["name"] == "ASE-EMT" and s["force_calls"] > 12
    assert s["fit"]["rmse_test"] < 0.02 and s["fit"]["cv_rmse"] < 0.02
    assert all(v["converged"] for v in s["scph"].values())
    # EMT Cu stiffens with T in SCPH (positive quartic on-site terms), more at 900 K
    x_h = max(s["named_frequencies"]["harmonic"]["X"])
    assert x_h < max(s["named_frequencies"]["300K"]["X"]) < max(s["named_frequencies"]["900K"]["X"])
    assert 0 < s["r_onsite_max"]["300"] < s["r_onsite_max"]["900"]
    ha, sc = s["kappa_ha_3ph"]["kappa_average_wmk"], s["kappa_scph_3ph"]["kappa_average_wmk"]
    assert all(k > 0 for k in ha + sc) and ha[1] < ha[0]
    assert s["kappa_convergence"]["relative_change_last"] is not None
    # the same chain with an unknown calculator spec fails clearly
    from tdphonon.errors import ModelLoadError

    with pytest.raises(ModelLoadError, match="not valid JSON"):
        reference_potential("gpaw:{broken")


# --------------------------------------------------------------------------------------------
# the branch as jobflow jobs, compared with an ML TDPH result of the same material
# --------------------------------------------------------------------------------------------
CU_SETTINGS = {"supercell_matrix": [[-2, 2, 2], [2, -2, 2], [2, 2, -2]], "n_configurations": 12,
               "shells": {"2": 1, "3": 1, "4": 1}, "temperatures": [300.0], "kappa_mesh": [6, 6, 6],
               "kappa_convergence_meshes": [[4, 4, 4], [6, 6, 6]]}


@pytest.mark.mlip
def test_validation_flow_runs_and_compares_with_ml(chgnet, tmp_path):
    from jobflow import run_locally
    from pymatgen.core import Structure

    from tdphonon import campaign as cmp
    from tdphonon.flows import TDPhononMaker
    from tdphonon.validation.flows import ValidationMaker

    cu = Structure.from_spacegroup("Fm-3m", [[3.6, 0, 0], [0, 3.6, 0], [0, 0, 3.6]], ["Cu"],
                                   [[0, 0, 0]]).get_primitive_structure()
    store = cmp.local_store(tmp_path / "store")
    ml = TDPhononMaker(model="chgnet", temperatures=(300.0,), campaign="ml", device="cpu",
                       harmonic_settings={"relax": False, "supercell_matrix": [[-2, 2, 2], [2, -2, 2], [2, 2, -2]]},
                       tdph_settings={"n_configurations": 8, "estimator": "force_fit"})
    run_locally(ml.make(cu, "Cu"), store=store, create_folders=False, raise_immediately=True, log=False)
    ml_doc = cmp.query(store, campaign="ml")[0]
    maker = ValidationMaker(calculator="emt", settings=CU_SETTINGS, campaign="val")
    flow = maker.make(cu, "Cu", ml_doc=ml_doc)
    cats = {j.name: j.config.manager_config.get("_category") for j in flow.jobs}
    assert cats == {"Cu reference harmonic": "tdphonon-dft", "Cu reference forces": "tdphonon-dft",
                    "Cu configurations": "tdphonon-cpu", "Cu anharmonic": "tdphonon-cpu"}
    out = run_locally(flow, store=store, create_folders=False, raise_immediately=True, log=False)
    doc = out[flow.jobs[-1].uuid][1].output
    comp = doc["comparison"]
    assert comp["ml"]["model"] == "CHGNet-0.3.0" and comp["reference"]["calculator"] == "ASE-EMT"
    rows = {r["point"]: r for r in comp["frequencies"]}
    assert {"Gamma", "X", "L"} <= set(rows)
    x = rows["X"]
    assert len(x["ml_shift_thz"]) == len(x["ref_shift_thz"]) == 3 and "shift_difference_thz" in x
    assert comp["r_onsite_max"][0]["ml_tdph"] > 0 and comp["r_onsite_max"][0]["ref_scph"] > 0
    assert comp["kappa_l"][0]["ha_3ph_wmk"] > 0 and comp["kappa_l"][0]["scph_3ph_wmk"] > 0
    # arrays went to the data store, the document stays small
    stored = store.query_one({"uuid": flow.jobs[-1].uuid}, load=False)
    assert "blob_uuid" in str(stored["output"]["force_constants"])


def test_validate_cli_local_on_screening_export(tmp_path):
    """``tdphonon validate`` reads a candidates.json (screening export) and writes comparison + figures."""
    import json

    from pymatgen.core import Structure
    from typer.testing import CliRunner

    from tdphonon.cli import app

    cu = Structure.from_spacegroup("Fm-3m", [[3.6, 0, 0], [0, 3.6, 0], [0, 0, 3.6]], ["Cu"],
                                   [[0, 0, 0]]).get_primitive_structure()
    cand = tmp_path / "candidates.json"
    cand.write_text(json.dumps([{"label": "Cu", "structure": cu.as_dict(), "sites": []}]))
    settings = tmp_path / "settings.json"
    settings.write_text(json.dumps(CU_SETTINGS))
    out = tmp_path / "val"
    res = CliRunner().invoke(app, ["validate", str(cand), "--calculator", "emt", "--settings", str(settings),
                                   "-c", "val", "--local", str(out)])
    assert res.exit_code == 0, res.output
    assert "1 validated, 0 failed" in res.output
    comp = json.loads((out / "Cu" / "comparison.json").read_text())
    assert comp["ml"] is None and comp["kappa_l"][0]["temperature"] == 300.0
    assert (out / "Cu" / "dispersions.png").stat().st_size > 10_000
    assert (out / "Cu" / "scattering_rates.png").stat().st_size > 10_000
    # a bad settings key is refused before anything runs
    res = CliRunner().invoke(app, ["validate", str(cand), "--settings", '{"n_configs": 3}', "--local", str(out)])
    assert res.exit_code == 2 and "n_configs" in res.output


def test_mesh_covariance_equals_supercell_covariance_on_the_commensurate_mesh():
    """Dense-mesh Σ (phonopy interpolation + phases) = supercell-Γ Σ when the mesh is the commensurate one."""
    from phonopy.structure.atoms import PhonopyAtoms

    from tdphonon.sampling import normal_modes, thermal_covariance
    from tdphonon.validation.scph import MeshCovariance, mesh_covariance

    # two-atom cell (Cu with a Au substituted): several branches, non-trivial phases
    a = bulk("Cu", "fcc", a=3.7, cubic=True)[:2]
    a.symbols[1] = "Au"
    unit = PhonopyAtoms(symbols=a.get_chemical_symbols(), cell=a.cell[:], scaled_positions=a.get_scaled_positions())
    ph = emt_phonon(unit, np.diag([2, 2, 3]), "P")
    fc0 = ph.force_constants.copy()
    fc = FCProjector.from_phonopy(ph).project(ph.force_constants)
    for t in (50.0, 600.0):
        want = thermal_covariance(normal_modes(ph.supercell, fc, ph.primitive), t).matrix
        got = mesh_covariance(ph, fc, t, (2, 2, 3))
        np.testing.assert_allclose(got, want, atol=1e-10 * np.abs(want).max())
    # a Φ that breaks the acoustic sum rule (uniform on-site shift; unequal masses, so the uniform
    # translations are no eigenvectors at Γ): both routes remove exactly the translations
    broken = fc + 0.3 * np.eye(3)[None, None] * np.eye(len(fc))[:, :, None, None]
    want = thermal_covariance(normal_modes(ph.supercell, broken, ph.primitive), 600.0).matrix
    np.testing.assert_allclose(mesh_covariance(ph, broken, 600.0, (2, 2, 3)), want,
                               atol=1e-10 * np.abs(want).max())
    want = thermal_covariance(normal_modes(ph.supercell, fc, ph.primitive), 600.0).matrix
    # a denser mesh changes Σ (the q integral converges), still a covariance (symmetric, PSD)
    dense = mesh_covariance(ph, fc, 600.0, (6, 6, 6))
    assert np.abs(dense - want).max() > 1e-6
    assert np.linalg.eigvalsh(dense).min() > -1e-10 * np.abs(dense).max()
    # one MeshCovariance for many Φ (as scph uses it): each call equals a fresh evaluation, nothing stale
    reused = MeshCovariance(ph, (6, 6, 6))
    softer = 0.8 * fc
    np.testing.assert_array_equal(reused(softer, 600.0), mesh_covariance(ph, softer, 600.0, (6, 6, 6)))
    np.testing.assert_array_equal(reused(fc, 600.0), dense)
    assert not np.allclose(reused(softer, 600.0), dense)
    np.testing.assert_array_equal(ph.force_constants, fc0)  # the input phonopy object is untouched
    with pytest.raises(ValueError, match="shape"):
        reused(fc[:2], 600.0)
    # SCPH on the commensurate mesh = SCPH on the supercell's own modes (projected, as the pipeline runs it:
    # the sum rule keeps the uniform translations the zero modes that both leave out)
    q = QuarticContraction.onsite(len(ph.supercell), 30.0)
    proj = FCProjector.from_phonopy(ph)
    on_sc = scph(ph.supercell, ph.primitive, fc, q, 300.0, tol_thz=1e-6, projector=proj)
    on_mesh = scph(ph.supercell, ph.primitive, fc, q, 300.0, tol_thz=1e-6, projector=proj, q_mesh=(2, 2, 3),
                   phonon=ph)
    assert on_sc.converged and on_mesh.converged and on_mesh.n_iterations == on_sc.n_iterations
    np.testing.assert_allclose(on_mesh.force_constants, on_sc.force_constants, atol=1e-8 * np.abs(fc).max())
    with pytest.raises(ValueError, match="phonon"):
        scph(ph.supercell, ph.primitive, fc, q, 300.0, q_mesh=(2, 2, 3))


# --------------------------------------------------------------------------------------------
# one real DFT run (GPAW) on a 2-atom primitive cell's small supercell
# --------------------------------------------------------------------------------------------
@pytest.mark.dft
@pytest.mark.slow
def test_gpaw_reference_harmonic_and_forces_for_silicon():
    """Si (2-atom primitive, 16-atom supercell), GPAW PW 200 eV PBE, 2x2x2 k: FD phonons + configuration forces.

    Physics check: the Γ optical frequency of Si (PBE ≈ 15.1 THz, experiment 15.5 THz).
    """
    pytest.importorskip("gpaw", reason="GPAW not installed (pip install gpaw with libxc/BLAS; see docs/validation.md)")
    import json

    from pymatgen.core import Lattice, Structure

    from tdphonon.validation.calculators import reference_potential
    from tdphonon.validation.pipeline import ValidationSettings, configurations_step, forces_step, harmonic_step

    si = Structure.from_spacegroup("Fd-3m", Lattice.cubic(5.47), ["Si"], [[0, 0, 0]]).get_primitive_structure()
    pot = reference_potential('gpaw:{"ecut": 200, "xc": "PBE", "kpts": [2, 2, 2]}')
    assert pot.identity.kind == "dft-gpaw" and len(pot.identity.sha256) == 64
    s = ValidationSettings(relax=False, supercell_matrix=(2, 2, 2), n_configurations=2, sampling="rattle",
                           rattle_amplitude=0.02)
    harm = harmonic_step(si, pot, s, "Si")
    from tdphonon.validation.pipeline import _phonon

    ph = _phonon(harm)
    ph.run_qpoints([[0, 0, 0]])
    optical = float(np.max(ph.qpoints.frequencies[0]))
    assert 14.0 < optical < 16.5, optical
    conf = configurations_step(harm, s, "Si")
    frc = forces_step(harm, conf["displacements"], pot, "Si")
    u, f = np.asarray(conf["displacements"]), np.asarray(frc["forces"])
    f_harm = -np.einsum("ijab,njb->nia", np.asarray(harm["force_constants"]), u)
    # at 0.02 Å the harmonic Φ₂ explains the DFT forces to ~10 % (these cheap settings: 200 eV, 2x2x2 k)
    assert np.linalg.norm(f - f_harm) / np.linalg.norm(f) < 0.2
    json.dumps(harm["calculator"])


def test_validation_flow_with_an_atomate2_static_maker(tmp_path):
    """Any atomate2 static maker can be the reference (here atomate2's EMT maker, single points)."""
    from atomate2.ase.jobs import EmtRelaxMaker
    from jobflow import run_locally
    from pymatgen.core import Structure

    from tdphonon import campaign as cmp
    from tdphonon.validation.calculators import reference_potential
    from tdphonon.validation.flows import ValidationMaker, settings_from_dict
    from tdphonon.validation.pipeline import run_validation

    cu = Structure.from_spacegroup("Fm-3m", [[3.6, 0, 0], [0, 3.6, 0], [0, 0, 3.6]], ["Cu"],
                                   [[0, 0, 0]]).get_primitive_structure()
    settings = {**CU_SETTINGS, "relax": False}
    maker = ValidationMaker(static_maker=EmtRelaxMaker(steps=1, relax_cell=False), settings=settings, campaign="a2")
    flow = maker.make(cu, "Cu")
    store = cmp.local_store(tmp_path / "store")
    out = run_locally(flow, store=store, create_folders=True, root_dir=tmp_path, raise_immediately=True, log=False)
    doc = out[flow.jobs[-1].uuid][1].output
    # the same physics as the in-process chain with the same calculator
    direct = run_validation(cu, reference_potential("emt"), settings_from_dict(settings), label="Cu").summary()
    for point in ("Gamma", "X", "L"):
        np.testing.assert_allclose(doc["summary"]["named_frequencies"]["300K"][point],
                                   direct["named_frequencies"]["300K"][point], atol=2e-3)
    # Φ₂ comes from a separate finite-displacement route (perfect-cell residual vs drift removal): the
    # 1e-3 THz differences move κ on this coarse 6³ mesh by ~1 %
    np.testing.assert_allclose(doc["summary"]["kappa_scph_3ph"]["kappa_average_wmk"],
                               direct["kappa_scph_3ph"]["kappa_average_wmk"], rtol=0.03)
    statics = [d for d in store.query({"metadata.tdphonon_step": {"$regex": "^reference static"}})]
    assert len(statics) == 1 + 12  # one FD displacement for fcc Cu, 12 configurations


def test_validation_flow_with_atomate2_vasp_makers_sends_vasp_statics_to_dft_workers():
    """Production path: atomate2's VASP relax/static makers (VASP itself is not run here).

    The flow converts to a FireWorks workflow; the relax and every spawned VASP static carry the DFT
    category; each static computes exactly one of our displaced supercells, and its VASP input set
    (POTCAR as a spec only) is a single point of that supercell.
    """
    from atomate2.vasp.jobs.core import RelaxMaker, StaticMaker
    from jobflow.managers.fireworks import flow_to_workflow
    from pymatgen.core import Lattice, Structure

    from tdphonon.validation.flows import ValidationMaker, settings_from_dict, static_forces_job
    from tdphonon.validation.pipeline import harmonic_setup

    si = Structure.from_spacegroup("Fd-3m", Lattice.cubic(5.47), ["Si"], [[0, 0, 0]]).get_primitive_structure()
    settings = {"relax": False, "supercell_matrix": [2, 2, 2], "n_configurations": 2, "temperatures": [300.0]}
    flow = ValidationMaker(static_maker=StaticMaker(), relax_maker=RelaxMaker(), settings=settings,
                           campaign="vasp").make(si, "Si")
    wf = flow_to_workflow(flow)
    cats = {fw.name: fw.spec.get("_category") for fw in wf.fws}
    assert cats.pop("relax") == "tdphonon-dft"
    assert set(cats.values()) == {"tdphonon-cpu"}  # setup, spawners, fit/SCPH/κ: light jobs
    setup = harmonic_setup(si, settings_from_dict(settings), "Si")
    displaced = setup["displaced_structures"]
    resp = static_forces_job.original(displaced, StaticMaker(), "Si", "harmonic", "tdphonon-dft")
    statics = resp.replace.jobs
    assert len(statics) == len(displaced) >= 1
    for job, structure in zip(statics, displaced, strict=True):
        assert job.config.manager_config["_category"] == "tdphonon-dft"
        assert job.function_args[0] == structure
        vis = StaticMaker().input_set_generator.get_input_set(structure, potcar_spec=True)
        assert vis.incar["NSW"] == 0 and len(vis.poscar.structure) == 16
        assert vis.poscar.structure == structure


def test_kspacing_calculator_follows_the_cell_for_forces_and_relaxation():
    """DFT calculators get a k-mesh per cell (``kspacing``), in force evaluations and in relaxations."""
    from ase.calculators.emt import EMT

    from tdphonon.potentials import ASEPotential, ModelIdentity
    from tdphonon.validation.calculators import _KspacingCalculator

    seen = []

    def factory(kpts):
        seen.append(kpts)
        return EMT()

    calc = _KspacingCalculator(factory, kspacing=0.5)
    pot = ASEPotential(calc, ModelIdentity("emt-k", "test", "0" * 64, "ase", "ase", "0"), "cpu")
    prim = bulk("Cu", "fcc", a=3.61)
    big = prim.repeat((2, 2, 2))
    pot.forces([prim])
    f_big = pot.forces([big])[0]
    expect = [tuple(int(np.ceil(2 * np.pi * r / 0.5)) for r in np.linalg.norm(a.cell.reciprocal(), axis=1))
              for a in (prim, big)]
    assert seen == [list(expect[0]), list(expect[1])] and expect[0] != expect[1]
    ref = big.copy()
    ref.calc = EMT()
    np.testing.assert_allclose(f_big, ref.get_forces(), atol=1e-12)
    # the calculator handed to relaxations is the same k-following one (stress included)
    assert pot.ase_calculator() is calc
    a = prim.copy()
    a.calc = pot.ase_calculator()
    assert a.get_stress().shape == (6,) and seen[-1] == list(expect[0])
