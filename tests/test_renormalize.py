"""Tests of tdphonon.renormalize with analytic potentials built from DFT force constants.

The on-site quartic model E = ½uᵀΦ⁰u + λ/4 Σu⁴ has the exact thermal Hessian
⟨H⟩_Σ = Φ⁰ + 3λ diag(Σ). It is not translationally invariant (the on-site term pins atoms), while
every estimate is constrained to the sum-rule subspace, so the exact targets are

* Hessian estimator: P(Φ⁰ + 3λ diag Σ) with P the orthogonal (symfc) projector;
* force fit: the Σ-weighted least-squares projection of the same matrix (the large-sample limit of
  the fit, by Stein's lemma), obtained from noise-free "data" u_s = M^{-1/2} w_s σ_s, F = −H u_s.

The self-consistent targets are the fixed points of Φ ↦ target(Φ⁰ + 3λ diag Σ(Φ)), computed here by
plain deterministic iteration (no sampling).
"""

from __future__ import annotations

import dataclasses
import json
import warnings

import numpy as np
import pytest

from _refdata import NACL_FD, requires_reference, symmetric_reference
from tdphonon.analytic import ForceConstantPotential
from tdphonon.errors import RelaxationError, SamplingError, UnphysicalForcesError
from tdphonon.metrics import r_full, r_onsite
from tdphonon.renormalize import (
    TDPHSettings,
    phonopy_with_force_constants,
    renormalize,
    structure_symmetry,
)
from tdphonon.sampling import (
    FCProjector,
    ModeAmplitudePolicy,
    commensurate_frequencies,
    derive_seed,
    fc_to_matrix,
    matrix_to_fc,
    normal_modes,
    sample_displacements,
    supercell_to_ase,
    thermal_covariance,
)

pytestmark = [pytest.mark.shared, requires_reference]

LAMBDA = 5.0  # eV/Å⁴: R_onsite ≈ 0.17 at 300 K (one-shot), 0.34 at 600 K for NaCl


@pytest.fixture(scope="module")
def nacl():
    return symmetric_reference(NACL_FD)


def _pot(ph, fc, lam=0.0):
    return ForceConstantPotential(supercell_to_ase(ph.supercell), fc, quartic=lam)


def _target(ph, proj, fc0, fc, t, estimator, lam=LAMBDA):
    modes = normal_modes(ph.supercell, fc, ph.primitive)
    cov = thermal_covariance(modes, t)
    h = fc0 + 3 * lam * matrix_to_fc(np.diag(np.diag(cov.matrix)))
    if estimator == "hessian":
        return proj.project(h)
    u = (modes.displacement_patterns() * cov.sigma[None, :]).T.reshape(-1, len(ph.supercell), 3)
    f = -(u.reshape(len(u), -1) @ fc_to_matrix(h).T).reshape(u.shape)
    return proj.fit(u, f)


def _fixed_point(ph, proj, fc0, t, estimator):
    fc = fc0.copy()
    for _ in range(300):
        new = _target(ph, proj, fc0, fc, t, estimator)
        if np.abs(new - fc).max() < 1e-10:
            return new
        fc = 0.5 * fc + 0.5 * new
    raise AssertionError("deterministic fixed point did not converge")


def _freqs(ph, fc):
    return commensurate_frequencies(ph.supercell, ph.primitive, fc)[1]


# --------------------------------------------------------------------------------------------
def test_projector_imposes_space_group_and_sum_rule(nacl):
    ph, proj, _ = nacl
    n = len(ph.supercell)
    rng = np.random.default_rng(0)
    a = rng.normal(size=(3 * n, 3 * n))
    rand = matrix_to_fc(a + a.T)
    p = proj.project(rand)
    assert np.abs(proj.project(p) - p).max() < 1e-12  # idempotent
    assert np.abs(p.sum(axis=1)).max() < 1e-10  # acoustic sum rule
    assert np.allclose(p, p.transpose(1, 0, 3, 2))  # Φ_ij = Φ_jiᵀ
    # phonopy's space-group symmetrisation leaves P·Φ unchanged, but changes the raw random Φ
    for fc, changed in ((p, False), (rand, True)):
        ph2 = phonopy_with_force_constants(ph, fc)
        ph2.symmetrize_force_constants_by_space_group(show_drift=False)
        assert bool(np.abs(ph2.force_constants - fc).max() > 1e-3) == changed
    # same projector as phonopy's own symfc-projector symmetrisation
    ph3 = phonopy_with_force_constants(ph, rand)
    ph3.symmetrize_force_constants(use_symfc_projector=True, show_drift=False)
    assert np.abs(ph3.force_constants - p).max() < 1e-10


def test_force_fit_equals_phonopy_symfc(nacl):
    ph, proj, fc0 = nacl
    pot = _pot(ph, fc0, LAMBDA)
    cov = thermal_covariance(normal_modes(ph.supercell, fc0, ph.primitive), 300.0)
    s = sample_displacements(cov, supercell_to_ase(ph.supercell), 4, seed=3)
    f = pot.forces(s.supercells)
    ph2 = phonopy_with_force_constants(ph, fc0)
    ph2.dataset = {"displacements": s.displacements, "forces": f}
    ph2.produce_force_constants(fc_calculator="symfc", show_drift=False)
    assert np.abs(ph2.force_constants - proj.fit(s.displacements, f)).max() < 1e-9


@pytest.mark.parametrize("estimator", ["hessian", "force_fit"])
@pytest.mark.parametrize("self_consistent", [False, True])
def test_harmonic_potential_returns_phi0(nacl, estimator, self_consistent):
    ph, proj, fc0 = nacl
    pot = _pot(ph, fc0)
    st = TDPHSettings(estimator=estimator, n_configurations=4, self_consistent=self_consistent, seed=1)
    res = renormalize(ph, pot, [300.0, 800.0], st, "NaCl", projector=proj)
    for r in res:
        assert np.abs(r.force_constants - fc0).max() < 1e-9
        assert r_full(r.force_constants, fc0) < 1e-9 and r.metrics["r_full"] < 1e-9
        assert r.metrics["r_onsite_max"] < 1e-9 and r.metrics["frequency_shift"] < 1e-9
        assert r.metrics["r_full_noise_floor"] < 1e-9  # two independent estimates agree exactly
        assert r.metrics["anharmonicity"] < 1e-12
        assert r.converged is (True if self_consistent else None) and r.n_iterations == 1
        assert r.force_calls == 4  # one force evaluation per configuration (analytic Hessians are free)
        assert r.hessian_calls == (4 if estimator == "hessian" else 0)


def test_hessian_average_is_exact_and_pipeline_reproduces_it(nacl):
    ph, proj, fc0 = nacl
    pot = _pot(ph, fc0, LAMBDA)
    st = TDPHSettings(estimator="hessian", n_configurations=6, seed=4)
    res = renormalize(ph, pot, [300.0], st, "NaCl", projector=proj)[0]
    seed = derive_seed(4, 300000, 0, 0)
    assert res.seeds == (seed,) and res.history[0]["seed"] == seed
    cov = thermal_covariance(normal_modes(ph.supercell, fc0, ph.primitive), 300.0)
    s = sample_displacements(cov, supercell_to_ase(ph.supercell), 6, antithetic=True, seed=seed)
    h = pot.hessians(s.supercells).mean(axis=0)
    u2 = (s.displacements.reshape(6, -1) ** 2).mean(axis=0)
    assert np.abs(h - (fc_to_matrix(fc0) + 3 * LAMBDA * np.diag(u2))).max() < 1e-12
    assert np.abs(res.force_constants - proj.project(matrix_to_fc(h))).max() < 1e-12


@pytest.mark.parametrize("estimator,sampling,n", [("hessian", "gaussian", 16),
                                                   ("hessian", "fixed_amplitude", 16),
                                                   ("force_fit", "gaussian", 48),
                                                   ("quartic_fit", "gaussian", 48)])
def test_one_shot_quartic_matches_closed_form(nacl, estimator, sampling, n):
    """... including ``quartic_fit`` with the Φ₄ sum rules on, a model that cannot represent the on-site
    term: it has the force fit's large-sample limit all the same (docs/methods.md), only less noise."""
    ph, proj, fc0 = nacl
    pot = _pot(ph, fc0, LAMBDA)
    st = TDPHSettings(estimator=estimator, sampling=sampling, n_configurations=n, seed=7)
    res = renormalize(ph, pot, [300.0, 600.0], st, "NaCl-quartic", projector=proj)
    idx = np.arange(len(ph.supercell))
    for r in res:
        if estimator == "quartic_fit":
            assert r.history[0]["quartic_model"]["relative_residual"] > 1e-3  # misspecified model
        target = _target(ph, proj, fc0, fc0, r.temperature, "force_fit" if estimator == "quartic_fit" else estimator)
        shift = np.abs(target[idx, idx] - fc0[idx, idx]).max()
        assert r_onsite(target, fc0).max() > 0.15  # the effect is large ...
        dev = np.abs(r.force_constants[idx, idx] - target[idx, idx])
        err = r.force_constants_error[idx, idx]
        assert r.errors["method"].startswith("batch means")
        assert np.all(dev <= 4 * err + 1e-9)  # ... and reproduced within the reported error
        assert dev.max() < 0.1 * shift
        fdev = np.abs(r.frequencies - _freqs(ph, target))
        assert fdev.max() <= 4 * np.nanmax(r.frequency_error) + 1e-6
        r_target = r_onsite(target, fc0).max()
        assert abs(r.metrics["r_onsite_max"] - r_target) <= 4 * r.errors["r_onsite_max"] + 1e-9


@pytest.mark.parametrize("estimator,sampling,n,tol", [("hessian", "gaussian", 16, 0.05),
                                                       ("force_fit", "gaussian", 64, 0.2),
                                                       ("quartic_fit", "gaussian", 48, 0.2)])
def test_self_consistent_quartic_reaches_fixed_point(nacl, estimator, sampling, n, tol):
    """... ``quartic_fit`` (Φ₄ sum rules on: cannot represent the on-site term) returns the fixed point of
    its last fitted model, and that is the force fit's self-consistent limit within its error."""
    ph, proj, fc0 = nacl
    pot = _pot(ph, fc0, LAMBDA)
    st = TDPHSettings(estimator=estimator, sampling=sampling, n_configurations=n, self_consistent=True,
                      tol_thz=tol, max_iterations=25, seed=3)
    res = renormalize(ph, pot, [300.0, 600.0], st, "NaCl-quartic", projector=proj)
    assert [r.temperature for r in res] == [300.0, 600.0]
    assert len(set(res[0].seeds) | set(res[1].seeds)) == len(res[0].seeds) + len(res[1].seeds)
    limit = "force_fit" if estimator == "quartic_fit" else estimator
    for r in res:
        assert r.converged, r.history
        if estimator == "quartic_fit":
            assert r.history[-1]["output"]["kind"] == "model_fixed_point"
            assert r.errors["method"].startswith("batch means")  # of the blocks' fixed points
        fp = _freqs(ph, _fixed_point(ph, proj, fc0, r.temperature, limit))
        one_shot = _freqs(ph, _target(ph, proj, fc0, fc0, r.temperature, limit))
        d_fp = np.abs(r.frequencies - fp).max()
        d_os = np.abs(r.frequencies - one_shot).max()
        assert d_fp <= 4 * np.nanmax(r.frequency_error) + tol
        if r.temperature == 600.0:  # SC and one-shot differ by 0.25 THz here: the run must pick SC
            assert d_fp < 0.5 * d_os
        assert r.force_calls > 0 and len(r.history) == r.n_iterations
    # the scan went high → low with a warm start: 300 K starts close to its fixed point
    assert res[0].history[0]["residual_thz"] < res[1].history[0]["residual_thz"]


@pytest.mark.parametrize("estimator,n", [("force_fit", 16), ("hessian", 4)])
def test_self_consistent_sample_reuse_reaches_fixed_point_with_less_noise(nacl, estimator, n):
    """Reweighted reuse of earlier ensembles: same fixed point, smaller error at equal cost per iteration."""
    ph, proj, fc0 = nacl
    t = 600.0
    fp = _freqs(ph, _fixed_point(ph, proj, fc0, t, estimator))
    out = {}
    for reuse in (False, True):
        st = TDPHSettings(estimator=estimator, n_configurations=n, self_consistent=True, tol_thz=0.03,
                          max_iterations=12, seed=11, reuse_samples=reuse, mixing=0.5)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the run without reuse may stop on its noise floor
            out[reuse] = renormalize(ph, _pot(ph, fc0, LAMBDA), [t], st, "NaCl-quartic", projector=proj)[0]
    r = out[True]
    pool = r.history[-1]["pool"]
    assert len(pool["iterations_used"]) >= 2  # earlier ensembles were reused ...
    assert pool["n_configurations"] > n and pool["effective_sample_size"] > 1.5 * n
    err = np.nanmax(r.frequency_error)
    assert np.abs(r.frequencies - fp).max() <= 4 * err + 1e-3  # ... without bias
    assert err < np.nanmax(out[False].frequency_error)  # ... and with less noise
    assert r.force_calls <= out[False].force_calls * 1.5 or estimator == "hessian"


@pytest.mark.parametrize("reuse", [False, True])
def test_noise_tol_stops_at_the_noise_floor_on_the_fixed_point(nacl, reuse):
    """A tolerance far below the sampling noise (1e-4 THz with 16 configurations) is never met; with
    ``noise_tol`` the run stops once every mode's residual is within noise_tol of its standard errors,
    and what it returns is the deterministic fixed point within its error bar (not the one-shot value)."""
    ph, proj, fc0 = nacl
    t = 600.0
    pot = _pot(ph, fc0, LAMBDA)
    base = TDPHSettings(estimator="force_fit", n_configurations=16, self_consistent=True, tol_thz=1e-4,
                        max_iterations=15, seed=5, reuse_samples=reuse)
    with pytest.warns(UserWarning, match="did not converge"):
        plain = renormalize(ph, pot, [t], base, "NaCl-quartic", projector=proj)[0]
    assert not plain.converged and plain.n_iterations == 15
    st = dataclasses.replace(base, noise_tol=3.0)
    r = renormalize(ph, pot, [t], st, "NaCl-quartic", projector=proj)[0]
    assert r.converged and r.history[-1]["converged_on"] == "noise" and r.n_iterations < 15
    last = r.history[-1]
    assert last["residual_thz"] > 1e-4 and last["residual_sigmas"] < 3.0
    assert last["residual_thz"] < 3.0 * last["frequency_error_thz"]  # the largest error bounds every mode's
    # no earlier iteration met the criterion (the first one is never judged on noise)
    assert "residual_sigmas" not in r.history[0]
    assert all(h["residual_sigmas"] >= 3.0 for h in r.history[1:-1])
    fp = _freqs(ph, _fixed_point(ph, proj, fc0, t, "force_fit"))
    one_shot = _freqs(ph, _target(ph, proj, fc0, fc0, t, "force_fit"))
    d_fp = np.abs(r.frequencies - fp).max()
    assert d_fp <= 4 * np.nanmax(r.frequency_error) + 3.0 * last["frequency_error_thz"]
    assert d_fp < 0.5 * np.abs(r.frequencies - one_shot).max()
    # off by default, and then not part of the digest (tests/test_validation_committed.py: stored digests hold)
    assert base.digest() != st.digest()
    assert dataclasses.replace(st, self_consistent=False).digest() == dataclasses.replace(
        base, self_consistent=False).digest()  # one-shot runs ignore it
    with pytest.raises(ValueError, match="noise_tol"):
        dataclasses.replace(base, noise_tol=2.0, n_seeds_for_error=2)


def test_target_error_samples_on_at_the_fixed_point_until_precise(nacl):
    """``target_error_thz`` with the noise stop and reuse: where the plain noise stop ends with error e,
    a target below e keeps sampling at the fixed point (the reweighted pool grows) until the largest
    frequency error is ≤ the target; same fixed point, smaller error, more force calls. An unreachable
    target ends as not converged, saying why."""
    ph, proj, fc0 = nacl
    t = 600.0
    pot = _pot(ph, fc0, LAMBDA)
    base = TDPHSettings(estimator="force_fit", n_configurations=16, self_consistent=True, tol_thz=1e-4,
                        max_iterations=15, seed=5, reuse_samples=True, noise_tol=3.0)
    r0 = renormalize(ph, pot, [t], base, "NaCl-quartic", projector=proj)[0]
    e0 = r0.history[-1]["frequency_error_thz"]
    target = 0.6 * e0
    r = renormalize(ph, pot, [t], dataclasses.replace(base, target_error_thz=target), "NaCl-quartic",
                    projector=proj)[0]
    last = r.history[-1]
    assert r.converged and last["converged_on"] == "noise" and r.n_iterations > r0.n_iterations
    assert last["frequency_error_thz"] <= target and last["residual_sigmas"] < 3.0
    assert any(h.get("above_target_error") for h in r.history[:-1])
    assert np.nanmax(r.frequency_error) == pytest.approx(last["frequency_error_thz"], rel=1e-9)  # same blocks
    assert r.force_calls > r0.force_calls
    fp = _freqs(ph, _fixed_point(ph, proj, fc0, t, "force_fit"))
    assert np.abs(r.frequencies - fp).max() <= 4 * np.nanmax(r.frequency_error) + 3.0 * target
    with pytest.warns(UserWarning, match="frequency error .* > target"):
        bad = renormalize(ph, pot, [t], dataclasses.replace(base, target_error_thz=1e-4, max_iterations=6),
                          "NaCl-quartic", projector=proj)[0]
    assert not bad.converged and bad.n_iterations == 6
    # off by default and absent from the digest then; needs the noise stop and the pool
    assert dataclasses.replace(base, target_error_thz=0.0).digest() == base.digest()
    assert dataclasses.replace(base, target_error_thz=target).digest() != base.digest()
    for kw in ({"noise_tol": 0.0}, {"reuse_samples": False}):
        with pytest.raises(ValueError, match="target_error_thz"):
            dataclasses.replace(base, target_error_thz=0.1, **kw)


def test_adaptive_mixing_converges_a_double_well_that_plain_mixing_cycles(nacl):
    """A double well Φ⁰ = −Φ_NaCl stabilised by a strong on-site quartic term (λ = 100 eV/Å⁴).

    Self-consistently ω² = ω₀² + 3λσ²(ω) with ω₀² < 0 and σ² ∝ 1/ω²: near the fixed point the map's
    slope, −(ω² − ω₀²)/ω², is steeper than −3, so plain mixing with α = 0.5 (stable only for slopes
    above −3) settles into a period-2 cycle. Halving α after an overshoot (the update reversed and the
    residual grew) reaches the fixed point, which is checked against a deterministic (noise-free)
    iteration with small α.
    """
    ph, proj, fc0 = nacl
    t, lam, well = 300.0, 100.0, -fc0
    policy = ModeAmplitudePolicy(kind="abs", threshold_thz=1.0)
    pot = ForceConstantPotential(supercell_to_ase(ph.supercell), well, quartic=lam)
    base = TDPHSettings(estimator="hessian", n_configurations=16, self_consistent=True, tol_thz=0.2,
                        max_iterations=20, seed=3, reuse_samples=True, policy=policy,
                        outlier_force_ratio=1e4, outlier_energy_per_atom=1e3)
    ph_dw = phonopy_with_force_constants(ph, well)
    out = {}
    for adaptive in (False, True):
        st = dataclasses.replace(base, adaptive_mixing=adaptive)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # imaginary harmonic modes; the plain run does not converge
            out[adaptive] = renormalize(ph_dw, pot, [t], st, "NaCl-double-well", projector=proj)[0]
    plain, adapt = out[False], out[True]
    res = [h["residual_thz"] for h in plain.history]
    assert not plain.converged and min(res[-6:]) > 2.0  # the cycle persists to the end
    assert all(h["mixing"] == 0.5 for h in plain.history[:-1])
    assert adapt.converged, [h["residual_thz"] for h in adapt.history]
    h = adapt.history
    alphas = [x["mixing"] for x in h if "mixing" in x]
    assert alphas[0] == 0.5 and "step_ratio" not in h[0]
    for k in range(1, len(alphas)):  # halved exactly after an overshoot: reversed update, growing residual
        overshoot = h[k]["step_ratio"] < 0 and h[k]["residual_thz"] > h[k - 1]["residual_thz"]
        assert alphas[k] == (max(alphas[k - 1] / 2, base.min_mixing) if overshoot else alphas[k - 1])
    assert min(alphas) < 0.5  # it met the period-2 overshoot ...
    assert min(x["step_ratio"] for x in h if "step_ratio" in x) < -0.5  # ... a reversed update
    # the deterministic fixed point of Φ ↦ P(Φ⁰ + 3λ diag Σ(Φ))
    fc = well.copy()
    for _ in range(3000):
        cov = thermal_covariance(normal_modes(ph.supercell, fc, ph.primitive), t, policy=policy)
        new = proj.project(well + 3 * lam * matrix_to_fc(np.diag(np.diag(cov.matrix))))
        if np.abs(new - fc).max() < 1e-9:
            break
        fc = 0.9 * fc + 0.1 * new
    else:
        raise AssertionError("deterministic double-well fixed point did not converge")
    fp = _freqs(ph, new)
    assert np.sort(fp.ravel())[3] > 1.0  # a real (stable) fixed point above the policy threshold
    assert np.abs(adapt.frequencies - fp).max() <= 4 * np.nanmax(adapt.frequency_error) + base.tol_thz


def test_pooled_weights_are_uniform_for_one_gaussian(nacl):
    from tdphonon.renormalize import _Ensemble, _Estimate, _pooled_estimate

    ph, proj, fc0 = nacl
    cov = thermal_covariance(normal_modes(ph.supercell, fc0, ph.primitive), 300.0)
    pool = []
    for k in range(3):
        u = sample_displacements(cov, supercell_to_ase(ph.supercell), 8, seed=k).displacements
        f = -(u.reshape(8, -1) @ fc_to_matrix(fc0).T).reshape(u.shape)
        est = _Estimate(fc0, None, None, np.zeros(8, int), u, f, [], 0, 0, 1.0, {})
        pool.append(_Ensemble.from_estimate(est, cov, k, antithetic=True))

    class _Ctx:
        settings = TDPHSettings(estimator="force_fit", reuse_samples=True, self_consistent=True)
        projector = proj

    pooled = _pooled_estimate(_Ctx(), pool, 4)
    np.testing.assert_allclose(pooled.weights, 1.0, rtol=1e-10)
    assert pooled.pool["effective_sample_size"] == pytest.approx(24)
    np.testing.assert_allclose(pooled.fc, fc0, atol=1e-8)  # harmonic forces: exact at any weights
    # a much hotter Σ for the target: the cold ensembles fall out of the pool
    hot = thermal_covariance(normal_modes(ph.supercell, fc0, ph.primitive), 1200.0)
    u = sample_displacements(hot, supercell_to_ase(ph.supercell), 8, seed=9).displacements
    est = _Estimate(fc0, None, None, np.zeros(8, int), u, -(u.reshape(8, -1) @ fc_to_matrix(fc0).T).reshape(u.shape),
                    [], 0, 0, 1.0, {})
    pooled = _pooled_estimate(_Ctx(), [*pool, _Ensemble.from_estimate(est, hot, 3, antithetic=True)], 4)
    assert pooled.pool["iterations_used"] == [3]


def test_pooled_hessian_average_is_reweighted_to_the_last_gaussian():
    """⟨H⟩ over a big ensemble from Σ_a plus a small one from Σ_b must estimate the Σ_b average."""
    from types import SimpleNamespace

    from tdphonon.renormalize import _Ensemble, _Estimate, _pooled_estimate

    rng = np.random.default_rng(0)
    var_a, var_b = np.full(6, 1.0), np.array([1.3, 1.2, 1.4, 1.3, 1.25, 1.35])  # 2 atoms, 6 coordinates
    pool = []
    for k, (var, n) in enumerate([(var_a, 4000), (var_b, 8)]):
        u = rng.normal(size=(n, 6)) * np.sqrt(var)
        h = np.stack([np.diag(x**2) for x in u])  # H(u) = diag(u²): ⟨H⟩_Σ = diag(Σ) exactly
        est = _Estimate(None, None, None, np.zeros(n, int), u.reshape(n, 2, 3), np.zeros((n, 2, 3)), [], n, 0,
                        1.0, {}, h)
        pool.append(_Ensemble.from_estimate(est, SimpleNamespace(matrix=np.diag(var)), k, antithetic=False))
    ctx = SimpleNamespace(settings=TDPHSettings(estimator="hessian", reuse_samples=True, self_consistent=True,
                                                min_effective_fraction=0.05),
                          projector=SimpleNamespace(project=lambda fc: fc))
    pooled = _pooled_estimate(ctx, pool, 4)
    assert pooled.pool["iterations_used"] == [0, 1] and pooled.pool["effective_sample_size"] > 1000
    got = np.diag(fc_to_matrix(pooled.fc))
    np.testing.assert_allclose(got, var_b, rtol=0.08)  # unweighted pooling would give ≈ var_a = 1


def test_invariant_to_atom_order_and_rigid_translation(nacl):
    from phonopy import Phonopy
    from phonopy.structure.atoms import PhonopyAtoms

    ph, proj, fc0 = nacl
    st = TDPHSettings(estimator="hessian", n_configurations=4, seed=5)
    base = renormalize(ph, _pot(ph, fc0, LAMBDA), [400.0], st, "NaCl", projector=proj)[0].force_constants
    st_ff = TDPHSettings(estimator="force_fit", n_configurations=4, seed=5)
    base_ff = renormalize(ph, _pot(ph, fc0, LAMBDA), [400.0], st_ff, "NaCl",
                          projector=proj)[0].force_constants
    uc = ph.unitcell
    perm = np.array([5, 2, 7, 0, 4, 1, 6, 3])
    cells = {
        "permuted": PhonopyAtoms(symbols=[uc.symbols[i] for i in perm], cell=uc.cell,
                                 scaled_positions=uc.scaled_positions[perm]),
        "translated": PhonopyAtoms(symbols=uc.symbols, cell=uc.cell,
                                   scaled_positions=uc.scaled_positions + np.array([0.013, 0.029, 0.041])),
    }
    ref_pos = ph.supercell.scaled_positions
    for name, cell in cells.items():
        ph2 = Phonopy(cell, supercell_matrix=ph.supercell_matrix, primitive_matrix=ph.primitive_matrix,
                      log_level=0)
        shift = 0.0
        if name == "translated":  # unit-cell fractional shift in supercell fractional coordinates
            shift = np.array([0.013, 0.029, 0.041]) @ np.linalg.inv(ph.supercell_matrix).T
        d = ph2.supercell.scaled_positions[:, None, :] - shift - ref_pos[None, :, :]
        d -= np.rint(d)
        mapping = np.argmin(np.linalg.norm(d, axis=-1), axis=1)  # new index → old index
        assert sorted(mapping) == list(range(len(mapping)))
        if name == "permuted":
            assert not np.array_equal(mapping, np.arange(len(mapping)))
        fc_new = fc0[np.ix_(mapping, mapping)]
        ph2.force_constants = fc_new
        for settings, expected in ((st, base), (st_ff, base_ff)):
            out = renormalize(ph2, _pot(ph2, fc_new, LAMBDA), [400.0], settings, "NaCl")[0].force_constants
            back = np.empty_like(out)
            back[np.ix_(mapping, mapping)] = out
            assert np.abs(back - expected).max() < 1e-9, (name, settings.estimator)


def test_output_obeys_space_group_and_sum_rule(nacl):
    ph, proj, fc0 = nacl
    st = TDPHSettings(estimator="force_fit", n_configurations=8, self_consistent=True, tol_thz=0.3, seed=2)
    r = renormalize(ph, _pot(ph, fc0, LAMBDA), [500.0], st, "NaCl", projector=proj)[0]
    fc = r.force_constants
    assert np.abs(fc.sum(axis=1)).max() < 1e-8 and np.abs(fc.sum(axis=0)).max() < 1e-8
    assert np.allclose(fc, fc.transpose(1, 0, 3, 2), atol=1e-12)
    ph2 = r.phonopy(ph)
    ph2.symmetrize_force_constants_by_space_group(show_drift=False)
    assert np.abs(ph2.force_constants - fc).max() < 1e-10
    assert r.metrics["symmetry_residual"] < 1e-10 and r.metrics["acoustic_sum_rule_residual"] < 1e-8
    # a fresh projector (own symmetry search) agrees
    assert np.abs(FCProjector(ph.supercell).project(fc) - fc).max() < 1e-10


def test_reproducible_with_seed(nacl):
    ph, proj, fc0 = nacl
    st = TDPHSettings(estimator="hessian", n_configurations=4, seed=9, self_consistent=True, tol_thz=0.3)
    a = renormalize(ph, _pot(ph, fc0, LAMBDA), [300.0], st, "NaCl", projector=proj)[0]
    b = renormalize(ph, _pot(ph, fc0, LAMBDA), [300.0], st, "NaCl", projector=proj)[0]
    c = renormalize(ph, _pot(ph, fc0, LAMBDA), [300.0],
                    TDPHSettings(**{**st.to_dict(), "seed": 10}), "NaCl", projector=proj)[0]
    assert np.array_equal(a.force_constants, b.force_constants) and a.seeds == b.seeds
    assert not np.allclose(a.force_constants, c.force_constants) and a.seeds != c.seeds


class _SpikyPotential(ForceConstantPotential):
    """Quartic model whose configuration #3 gets huge forces and energy (an MLIP extrapolation)."""

    def _compute(self, atoms_list):
        e, f = super()._compute(atoms_list)
        e = np.array(e, dtype=float)
        f = [np.array(x) for x in f]
        for k, a in enumerate(atoms_list):
            if str(a.info.get("label", "")).endswith("#3"):
                f[k] = f[k] * 100.0
                e[k] += 5.0 * len(a)
        return e, f


def test_outliers_raise_or_are_dropped_and_recorded(nacl):
    ph, proj, fc0 = nacl
    ref = supercell_to_ase(ph.supercell)
    st = TDPHSettings(estimator="hessian", n_configurations=8, seed=1)
    with pytest.raises(UnphysicalForcesError) as err:
        renormalize(ph, _SpikyPotential(ref, fc0, quartic=LAMBDA), [300.0], st, "NaCl-spiky", projector=proj)
    assert err.value.label == "NaCl-spiky" and "#3" in str(err.value)
    st_drop = TDPHSettings(**{**st.to_dict(), "drop_outliers": True})
    r = renormalize(ph, _SpikyPotential(ref, fc0, quartic=LAMBDA), [300.0], st_drop, "NaCl-spiky",
                    projector=proj)[0]
    assert sorted(o["configuration"] for o in r.outliers) == [2, 3]  # #3 and its antithetic partner #2
    assert r.hessian_calls == 6 and r.history[0]["n_dropped"] == 2
    # the model's own force limit (UnphysicalForcesError inside the potential) is handled the same way
    pot = _SpikyPotential(ref, fc0, quartic=LAMBDA)
    pot.max_force = 20.0
    with pytest.raises(UnphysicalForcesError) as err:
        renormalize(ph, pot, [300.0], st, "NaCl-spiky", projector=proj)
    assert err.value.label == "NaCl-spiky"
    r2 = renormalize(ph, pot, [300.0], st_drop, "NaCl-spiky", projector=proj)[0]
    assert sorted(o["configuration"] for o in r2.outliers) == [2, 3]


def test_phonopy_copy_and_named_qpoints(nacl):
    ph, proj, fc0 = nacl
    st = TDPHSettings(estimator="hessian", n_configurations=4, seed=1)
    r = renormalize(ph, _pot(ph, fc0, LAMBDA), [300.0], st, "NaCl", projector=proj,
                    qpoints={"X": [0.5, 0.0, 0.5], "L": [0.5, 0.5, 0.5]})[0]
    ph_t = r.phonopy(ph)
    assert ph_t is not ph and np.array_equal(ph_t.force_constants, r.force_constants)
    assert np.array_equal(ph.force_constants, fc0)  # input untouched
    for q, f in zip(r.qpoints, r.frequencies, strict=True):
        ph_t.run_qpoints([q])
        assert np.allclose(ph_t.qpoints.frequencies[0], f, atol=1e-6)
    ix = int(np.argmin(np.linalg.norm(r.qpoints - np.array([0.5, 0.0, 0.5]), axis=1)))
    assert np.allclose(r.named_frequencies["X"], r.frequencies[ix], atol=1e-6)
    assert np.all(r.named_frequencies["L"][3:] > r.named_harmonic_frequencies["L"][3:])  # on-site stiffening
    d = r.to_dict()
    json.dumps(d)
    assert d["settings"]["digest"] == st.digest() and d["settings"]["model"]["kind"] == "analytic"
    assert d["mode_report"]["harmonic"]["n_imaginary"] == 0
    assert d["mode_report"]["policy_dependent"] is False


def test_result_says_when_the_soft_mode_policy_shaped_it(nacl):
    """Modes below the policy threshold in the final Σ: flagged and warned (the fixed point depends on it)."""
    ph, proj, fc0 = nacl
    f0 = commensurate_frequencies(ph.supercell, ph.primitive, fc0)[1]
    low = float(np.min(f0[f0 > 0.1]))  # lowest mode but the acoustic Γ ones
    st = TDPHSettings(estimator="hessian", n_configurations=4, seed=1,
                      policy=ModeAmplitudePolicy(kind="abs", threshold_thz=low + 0.5))
    with pytest.warns(UserWarning, match="depends on that policy"):
        r = renormalize(ph, _pot(ph, fc0, LAMBDA), [300.0], st, "NaCl", projector=proj)[0]
    assert r.mode_report["policy_dependent"] is True and r.mode_report["final"]["n_affected"] > 0


def test_converged_imaginary_fixed_point_is_flagged(nacl):
    """A harmonic potential Φ = −Φ_NaCl: ⟨H⟩ = Φ for any Σ, so the self-consistent loop "converges" at
    once, but every optical mode is imaginary and Σ exists only through the |ν| policy — not a SCHA
    solution. ``converged`` stays the numerical statement; ``imaginary_fixed_point`` says what it is."""
    ph, proj, fc0 = nacl
    unstable = -fc0
    ph_u = phonopy_with_force_constants(ph, unstable)
    st = TDPHSettings(estimator="hessian", n_configurations=4, seed=2, self_consistent=True, tol_thz=0.05,
                      max_iterations=4, policy=ModeAmplitudePolicy(kind="abs", threshold_thz=0.5),
                      outlier_force_ratio=1e4, outlier_energy_per_atom=1e3)
    with pytest.warns(UserWarning, match="not a SCHA solution"):
        r = renormalize(ph_u, _pot(ph, unstable), [300.0], st, "NaCl-inverted", projector=proj)[0]
    assert r.converged is True and r.n_iterations == 1
    assert r.mode_report["imaginary_fixed_point"] is True and r.mode_report["final"]["n_imaginary"] > 0
    assert np.min(r.frequencies) < -1.0
    # a stable harmonic crystal converges to a real fixed point; one-shot runs do not say
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "not a SCHA solution" warning
        ok = renormalize(ph, _pot(ph, fc0), [300.0], st, "NaCl", projector=proj)[0]
    assert ok.converged is True and ok.mode_report["imaginary_fixed_point"] is False
    one = renormalize(ph, _pot(ph, fc0), [300.0], dataclasses.replace(st, self_consistent=False), "NaCl",
                      projector=proj)[0]
    assert one.converged is None and one.mode_report["imaginary_fixed_point"] is None


def test_settings_digest_and_roundtrip():
    a = TDPHSettings()
    b = TDPHSettings.from_dict(json.loads(json.dumps(a.to_dict())))
    assert a == b and a.digest() == b.digest() and len(a.digest()) == 64
    assert TDPHSettings(seed=1).digest() != a.digest()
    assert TDPHSettings(policy=ModeAmplitudePolicy("exclude")).digest() != a.digest()
    expected_policy = {"kind": "abs", "threshold_thz": 0.5, "floor_thz": 1.0, "amplitude": 0.05}
    assert a.to_dict()["policy"] == expected_policy
    with pytest.raises(ValueError):
        TDPHSettings(antithetic=True, n_configurations=3)
    with pytest.raises(ValueError):
        TDPHSettings(mixing=0.0)
    with pytest.raises(ValueError):
        TDPHSettings(mixing=0.3, min_mixing=0.4)
    # the mixing schedule only matters self-consistently: one-shot digests do not see it
    assert TDPHSettings(adaptive_mixing=False, min_mixing=0.1).digest() == a.digest()
    sc = TDPHSettings(self_consistent=True)
    assert dataclasses.replace(sc, adaptive_mixing=False).digest() != sc.digest()


def test_lost_symmetry_is_detected(nacl):
    from phonopy import Phonopy
    from phonopy.structure.atoms import PhonopyAtoms

    ph, _, _ = nacl
    assert structure_symmetry(ph)["near_higher_symmetry"] is False
    uc = ph.unitcell
    pos = uc.scaled_positions.copy()
    pos[0] += [0.002, 0.0, 0.0]  # 0.011 Å: a relaxation that broke the cubic symmetry
    bad = Phonopy(PhonopyAtoms(symbols=uc.symbols, cell=uc.cell, scaled_positions=pos),
                  supercell_matrix=np.eye(3), primitive_matrix="P", log_level=0)
    sym = structure_symmetry(bad)
    assert sym["near_higher_symmetry"] and sym["n_operations_loose"] > sym["n_operations"]
    n = len(bad.supercell)
    bad.force_constants = np.zeros((n, n, 3, 3))
    st = TDPHSettings(symmetry_loss="raise", n_configurations=2)
    with pytest.raises(RelaxationError) as err:
        renormalize(bad, _pot(bad, np.zeros((n, n, 3, 3))), [300.0], st, "NaCl-distorted")
    assert err.value.label == "NaCl-distorted"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(UserWarning, match="lost symmetry"):
            renormalize(bad, _pot(bad, np.zeros((n, n, 3, 3))), [300.0], TDPHSettings(n_configurations=2),
                        "NaCl-distorted")


def test_error_bar_from_independent_seeds(nacl):
    ph, proj, fc0 = nacl
    st = TDPHSettings(estimator="hessian", n_configurations=8, n_seeds_for_error=3, seed=12)
    r = renormalize(ph, _pot(ph, fc0, LAMBDA), [300.0], st, "NaCl", projector=proj)[0]
    assert r.errors["method"] == "independent seeds" and r.errors["n_estimates"] == 3
    assert r.seeds == tuple(derive_seed(12, 300000, 0, j) for j in range(3))
    assert r.hessian_calls == 24 and "full size" in r.metrics["r_full_noise_floor_note"]
    # Φ(T) is the mean of the three estimates: reproduce it from the recorded seeds
    cov = thermal_covariance(normal_modes(ph.supercell, fc0, ph.primitive), 300.0)
    pot = _pot(ph, fc0, LAMBDA)
    ests = []
    for sd in r.seeds:
        s = sample_displacements(cov, supercell_to_ase(ph.supercell), 8, antithetic=True, seed=sd)
        ests.append(proj.project(matrix_to_fc(pot.hessians(s.supercells).mean(axis=0))))
    assert np.abs(r.force_constants - np.mean(ests, axis=0)).max() < 1e-12
    expected_err = np.std(ests, axis=0, ddof=1) / np.sqrt(3)
    assert np.allclose(r.force_constants_error, expected_err, atol=1e-12)
    idx = np.arange(len(ph.supercell))
    target = _target(ph, proj, fc0, fc0, 300.0, "hessian")
    dev = np.abs(r.force_constants - target)[idx, idx]
    assert np.all(dev <= 4 * r.force_constants_error[idx, idx] + 1e-9)


def test_force_fit_without_displacements_is_refused(nacl):
    ph, proj, fc0 = nacl
    st = TDPHSettings(estimator="force_fit", quantum=False, n_configurations=2)
    with pytest.raises(SamplingError) as err:
        renormalize(ph, _pot(ph, fc0, LAMBDA), [0.0], st, "NaCl-cold", projector=proj)
    assert err.value.label == "NaCl-cold"
    # the Hessian estimator is exact there: classical 0 K means Φ(T) = Φ⁰
    st_h = TDPHSettings(quantum=False, n_configurations=2)
    r = renormalize(ph, _pot(ph, fc0, LAMBDA), [0.0], st_h, "NaCl-cold", projector=proj)[0]
    assert np.abs(r.force_constants - fc0).max() < 1e-12


# --------------------------------------------------------------------------------------------
# quartic_fit: a model-based estimator, exact (no sampling noise) when the potential is quartic
# --------------------------------------------------------------------------------------------
def _taylor_potential(ph, fc0, seed=2, scale3=0.5, scale4=0.5):
    """Φ⁰ + random symmetric Φ₃/Φ₄ (hiPhive cluster space, first shell) as an exact Taylor potential.

    Most random quartic terms destabilise the lattice; seed 2 at these scales stiffens it (its SCPH
    fixed point at 600 K has no imaginary mode, and one-shot shifts reach 3.7 THz).
    """
    from hiphive import ClusterSpace
    from hiphive import ForceConstantPotential as FCP

    from tdphonon.validation.ifc import shell_cutoffs

    prim = supercell_to_ase(ph.primitive)
    c1 = shell_cutoffs(prim, [1])[0]
    cs = ClusterSpace(prim, [c1, c1, c1])
    rng = np.random.default_rng(seed)
    params = np.zeros(cs.n_dofs)
    for order, scale in ((3, scale3), (4, scale4)):
        idx = np.asarray(cs.get_parameter_indices(order))
        params[idx] = rng.normal(scale=scale, size=idx.size)
    ref = supercell_to_ase(ph.supercell)
    fcs = FCP(cs, params).get_force_constants(ref)
    return ForceConstantPotential(ref, fc0, anharmonic=fcs, name="random-taylor"), fcs


def _scph_frequencies(ph, proj, fc0, quartic, t, initial=None):
    from tdphonon.validation.scph import scph

    r = scph(ph.supercell, ph.primitive, fc0, quartic, t, mixing=0.5, tol_thz=1e-8, max_iterations=2000,
             projector=proj, initial=initial)
    assert r.converged
    return r.frequencies_thz, r.force_constants


def test_quartic_fit_is_exact_for_a_taylor_potential(nacl):
    """Cubic + quartic Taylor potential: one-shot = P(Φ⁰ + ½Φ₄:Σ(Φ⁰)) and SC = the SCPH fixed point,
    to round-off, from 4 configurations per iteration (the cubic forces cancel in the odd part)."""
    from tdphonon.validation.scph import QuarticContraction

    ph, proj, fc0 = nacl
    pot, fcs = _taylor_potential(ph, fc0)
    quartic = QuarticContraction.from_hiphive(fcs)
    t = 600.0
    cov0 = thermal_covariance(normal_modes(ph.supercell, fc0, ph.primitive), t).matrix
    one_shot = proj.project(matrix_to_fc(fc_to_matrix(fc0) + quartic(cov0)))
    assert np.abs(_freqs(ph, one_shot) - _freqs(ph, fc0)).max() > 0.3  # a large effect ...
    st = TDPHSettings(estimator="quartic_fit", n_configurations=4, seed=1)
    r = renormalize(ph, pot, [t], st, "NaCl-taylor", projector=proj)[0]
    assert np.abs(r.force_constants - one_shot).max() < 1e-8  # ... reproduced exactly
    model = r.history[0]["quartic_model"]
    assert model["relative_residual"] < 1e-10 and model["n_pairs"] == 2
    fp, _ = _scph_frequencies(ph, proj, fc0, quartic, t)
    st_sc = TDPHSettings(estimator="quartic_fit", n_configurations=4, seed=1, self_consistent=True,
                         tol_thz=1e-4, max_iterations=5)
    r = renormalize(ph, pot, [t], st_sc, "NaCl-taylor", projector=proj)[0]
    assert r.converged and r.n_iterations == 2  # the jump to the model's fixed point is exact
    assert r.history[0]["model_scph"]["converged"]
    assert np.abs(r.frequencies - fp).max() < 1e-5
    assert r.force_calls == 8
    # one iteration: the output is the fitted model's fixed point (4 force calls) — or, asked for the
    # estimate, one Picard step from Φ⁰ (= the one-shot result), far from it
    out = {}
    for kind in ("fixed_point", "estimate"):
        st1 = dataclasses.replace(st_sc, max_iterations=1, quartic_output=kind)
        with pytest.warns(UserWarning, match="did not converge"):
            out[kind] = renormalize(ph, pot, [t], st1, "NaCl-taylor", projector=proj)[0]
        assert out[kind].force_calls == 4 and not out[kind].converged
    assert out["fixed_point"].history[-1]["output"]["kind"] == "model_fixed_point"
    assert np.abs(out["fixed_point"].frequencies - fp).max() < 1e-5
    assert np.abs(out["estimate"].force_constants - one_shot).max() < 1e-8
    assert "output" not in out["estimate"].history[-1]
    with pytest.raises(ValueError, match="quartic_output"):
        TDPHSettings(estimator="quartic_fit", quartic_output="picard")


def test_quartic_fit_on_site_quartic_closed_form(nacl):
    """On-site (λ/4)Σu⁴ (no sum rule on Φ₄): ⟨H⟩ = P(Φ⁰ + 3λ diag Σ) exactly, one-shot and at the
    self-consistent fixed point; with the sum rules imposed the on-site term is not representable
    and the fit residual says so."""
    ph, proj, fc0 = nacl
    pot = _pot(ph, fc0, LAMBDA)
    for t in (300.0, 600.0):
        st = TDPHSettings(estimator="quartic_fit", quartic_acoustic_sum_rules=False, quartic_shells=1,
                          n_configurations=4, seed=2)
        r = renormalize(ph, pot, [t], st, "NaCl-quartic", projector=proj)[0]
        assert np.abs(r.force_constants - _target(ph, proj, fc0, fc0, t, "hessian")).max() < 1e-8
        st_sc = TDPHSettings(estimator="quartic_fit", quartic_acoustic_sum_rules=False, quartic_shells=1,
                             n_configurations=4, seed=2, self_consistent=True, tol_thz=1e-4)
        r = renormalize(ph, pot, [t], st_sc, "NaCl-quartic", projector=proj)[0]
        fp = _freqs(ph, _fixed_point(ph, proj, fc0, t, "hessian"))
        assert r.converged and np.abs(r.frequencies - fp).max() < 1e-5
    st_asr = TDPHSettings(estimator="quartic_fit", n_configurations=4, seed=2)
    r = renormalize(ph, pot, [600.0], st_asr, "NaCl-quartic", projector=proj)[0]
    assert r.history[0]["quartic_model"]["relative_residual"] > 1e-3


def test_quartic_fit_harmonic_returns_phi0_and_needs_pairs(nacl):
    ph, proj, fc0 = nacl
    st = TDPHSettings(estimator="quartic_fit", n_configurations=4, self_consistent=True, seed=4)
    r = renormalize(ph, _pot(ph, fc0), [300.0], st, "NaCl", projector=proj)[0]
    assert np.abs(r.force_constants - fc0).max() < 1e-9 and r.n_iterations == 1
    with pytest.raises(ValueError, match="antithetic"):
        TDPHSettings(estimator="quartic_fit", antithetic=False)
    from tdphonon.taylor import QuarticFitter

    fitter = QuarticFitter(ph, proj, quartic_shells=1)
    u = np.random.default_rng(0).normal(scale=0.05, size=(2, len(ph.supercell), 3))
    with pytest.raises(ValueError, match="antithetic pairs"):
        fitter.fit(u, u)
    with pytest.raises(ValueError, match="equations for 35 parameters"):
        fitter.fit(u[:0], u[:0])


def test_quartic_fit_error_bars_and_sample_reuse(nacl):
    """Independent seeds give a (tiny) error bar; pooled SC reuse keeps the exact answer."""
    ph, proj, fc0 = nacl
    pot, fcs = _taylor_potential(ph, fc0)
    from tdphonon.validation.scph import QuarticContraction

    fp, _ = _scph_frequencies(ph, proj, fc0, QuarticContraction.from_hiphive(fcs), 300.0)
    st = TDPHSettings(estimator="quartic_fit", n_configurations=4, self_consistent=True, tol_thz=1e-4,
                      n_seeds_for_error=2, reuse_samples=True, seed=5)
    r = renormalize(ph, pot, [300.0], st, "NaCl-taylor", projector=proj)[0]
    assert r.converged and np.abs(r.frequencies - fp).max() < 1e-5
    assert r.history[-1]["pool"]["n_configurations"] > 4
    assert np.nanmax(r.frequency_error) < 1e-6


def test_settings_stored_by_earlier_versions_read_as_they_ran():
    """A spec stored before adaptive mixing / noise_tol / reuse / quartic_output existed (e.g. a firework
    rerun after an upgrade) runs as it did then, not with today's defaults; the digest is unchanged."""
    from tdphonon.renormalize import OPTION_HISTORY, TDPHSettings

    added = {k for _, opts in OPTION_HISTORY for k in opts}
    old = {k: v for k, v in TDPHSettings(self_consistent=True).to_dict().items() if k not in added}
    st = TDPHSettings.from_stored(old)
    assert st.adaptive_mixing is False and st.reuse_samples is False and st.noise_tol == 0.0
    assert st.quartic_output == "estimate"  # quartic SC returned the estimate before 934842f
    assert (st.quartic_shells, st.min_mixing) == (TDPHSettings().quartic_shells, TDPHSettings().min_mixing)
    assert TDPHSettings.from_dict(old).adaptive_mixing is True  # from_dict: today's defaults
    full = TDPHSettings(self_consistent=True, noise_tol=3.0).to_dict()
    assert TDPHSettings.from_stored({**full, "digest": "x"}) == TDPHSettings.from_dict(full)  # complete: as is
