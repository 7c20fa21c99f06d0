"""Tests of tdphonon.sampling: Σ(T), its limits, mode policies and displacement sampling."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg

from _refdata import NACL_FD, SI, SRTIO3, requires_reference, symmetric_reference
from tdphonon.errors import SamplingError
from tdphonon.sampling import (
    KB_EV,
    THZ_TO_EV,
    TO_THZ,
    ModeAmplitudePolicy,
    fc_to_matrix,
    matrix_to_fc,
    normal_modes,
    sample_displacements,
    supercell_to_ase,
    thermal_covariance,
    thermal_samples,
)

pytestmark = [pytest.mark.shared, requires_reference]


@pytest.fixture(scope="module")
def nacl():
    return symmetric_reference(NACL_FD)


@pytest.fixture(scope="module")
def si():
    return symmetric_reference(SI)


def _dynmat(ph, fc):
    sq = np.sqrt(np.repeat(np.asarray(ph.supercell.masses), 3))
    return fc_to_matrix(fc) / sq[:, None] / sq[None, :], sq


def _imaginary_fc(ph, fc0, shift_thz):
    """Φ' = Φ⁰ − s (M − m mᵀ/Σm ⊗ I): every non-translational ω² is lowered by s exactly.

    The added term is invariant under the space group (it depends only on the masses) and obeys
    the sum rule, so Φ' is a symmetric FC set with known imaginary modes.
    """
    m = np.asarray(ph.supercell.masses, dtype=float)
    s = (shift_thz / TO_THZ) ** 2
    add = np.kron(np.diag(m) - np.outer(m, m) / m.sum(), np.eye(3))
    return matrix_to_fc(fc_to_matrix(fc0) - s * add), s


@pytest.mark.parametrize("which", ["si", "nacl"])
def test_commensurate_q_equals_supercell_gamma(which, request):
    ph, _, fc0 = request.getfixturevalue(which)
    m_q = normal_modes(ph.supercell, fc0, ph.primitive, method="commensurate")
    m_s = normal_modes(ph.supercell, fc0, method="supercell")
    n3 = 3 * len(ph.supercell)
    assert np.allclose(m_q.eigenvectors.T @ m_q.eigenvectors, np.eye(n3), atol=1e-12)
    assert np.allclose(m_q.frequencies, m_s.frequencies, atol=1e-8)
    assert m_q.is_translation.sum() == 3 and m_s.is_translation.sum() == 3
    for quantum in (True, False):
        for t in (0.0, 300.0, 1200.0):
            c_q = thermal_covariance(m_q, t, quantum)
            c_s = thermal_covariance(m_s, t, quantum)
            scale = max(np.abs(c_s.matrix).max(), 1e-30)
            assert np.abs(c_q.matrix - c_s.matrix).max() <= 1e-10 * scale


def test_covariance_matches_phonopy_random_displacements(nacl):
    from phonopy.phonon.random_displacements import RandomDisplacements

    ph, _, fc0 = nacl
    modes = normal_modes(ph.supercell, fc0, ph.primitive)
    for t in (0.0, 300.0):
        rd = RandomDisplacements(ph.supercell, ph.primitive, fc0, dist_func="quantum")
        rd.run_correlation_matrix(t)
        ours = thermal_covariance(modes, t, quantum=True).matrix
        assert np.abs(fc_to_matrix(rd.uu) - ours).max() < 1e-10 * np.abs(ours).max()


def test_classical_limit_is_kT_times_mass_weighted_pseudo_inverse(nacl):
    ph, _, fc0 = nacl
    t = 500.0
    cov = thermal_covariance(normal_modes(ph.supercell, fc0, ph.primitive), t, quantum=False).matrix
    d, sq = _dynmat(ph, fc0)
    expected = KB_EV * t * np.linalg.pinv(d, rcond=1e-10, hermitian=True) / sq[:, None] / sq[None, :]
    assert np.abs(cov - expected).max() < 1e-9 * np.abs(expected).max()
    phi = fc_to_matrix(fc0)
    assert np.allclose(phi @ cov @ phi, KB_EV * t * phi, atol=1e-9 * np.abs(phi).max())


def test_zero_temperature_is_zero_point_motion(nacl):
    ph, _, fc0 = nacl
    modes = normal_modes(ph.supercell, fc0, ph.primitive)
    d, sq = _dynmat(ph, fc0)
    # σ² = ħ/(2ω) = (hν/2)/ω²  →  Σ₀ = (h·TO_THZ/2) M^{-1/2} D^{-1/2} M^{-1/2} on the non-translational space
    d_inv_sqrt = np.real(scipy.linalg.sqrtm(np.linalg.pinv(d, rcond=1e-10, hermitian=True)))
    expected = 0.5 * THZ_TO_EV * TO_THZ * d_inv_sqrt / sq[:, None] / sq[None, :]
    zero = thermal_covariance(modes, 0.0, quantum=True).matrix
    assert np.abs(zero - expected).max() < 1e-7 * np.abs(expected).max()
    # T → 0 continuously; the classical Σ vanishes at 0 K
    assert np.allclose(thermal_covariance(modes, 1.0).matrix, zero, atol=1e-12)
    assert np.abs(thermal_covariance(modes, 0.0, quantum=False).matrix).max() == 0.0


def test_quantum_exceeds_classical_and_converges_at_high_t(nacl):
    ph, _, fc0 = nacl
    modes = normal_modes(ph.supercell, fc0, ph.primitive)
    for t in (50.0, 300.0, 1000.0):
        q = np.diag(thermal_covariance(modes, t, True).matrix)
        c = np.diag(thermal_covariance(modes, t, False).matrix)
        assert np.all(q >= c)
    # x coth x − 1 ≤ x²/3 with x = hν_max / 2k_BT: relative excess bounded at 5000 K
    t = 5000.0
    q = np.diag(thermal_covariance(modes, t, True).matrix)
    c = np.diag(thermal_covariance(modes, t, False).matrix)
    x = THZ_TO_EV * modes.frequencies.max() / (2 * KB_EV * t)
    assert np.all(q / c - 1 <= x**2 / 3 + 1e-12)
    assert np.all(q / c - 1 > 0)


@pytest.mark.parametrize("method", ["commensurate", "supercell"])
def test_translations_removed_exactly_even_without_sum_rule(nacl, method):
    ph, _, fc0 = nacl
    rng = np.random.default_rng(3)
    noise = rng.normal(scale=1e-3, size=fc_to_matrix(fc0).shape)
    fc_bad = matrix_to_fc(fc_to_matrix(fc0) + noise + noise.T)  # breaks the sum rule
    assert np.abs(fc_bad.sum(axis=1)).max() > 1e-3
    modes = normal_modes(ph.supercell, fc_bad, ph.primitive, method=method)
    assert modes.is_translation.sum() == 3
    cov = thermal_covariance(modes, 300.0)
    m = np.asarray(ph.supercell.masses)
    res = sample_displacements(cov, supercell_to_ase(ph.supercell), 6, seed=1)
    com = np.einsum("i,kia->ka", m, res.displacements) / m.sum()
    assert np.abs(com).max() < 1e-12
    mass_translation = np.kron(m, np.eye(3)[0])
    assert np.abs(cov.matrix @ mass_translation).max() < 1e-12


@pytest.mark.parametrize("kind", ["abs", "floor", "fixed_amplitude", "exclude"])
def test_imaginary_mode_policies(nacl, kind):
    ph, _, fc0 = nacl
    fc_im, s = _imaginary_fc(ph, fc0, 2.0)
    m0 = normal_modes(ph.supercell, fc0, ph.primitive)
    modes = normal_modes(ph.supercell, fc_im, ph.primitive)
    nu0 = m0.frequencies[~m0.is_translation]
    n_im_expected = int(np.sum(nu0 < 2.0))
    assert n_im_expected > 3
    policy = ModeAmplitudePolicy(kind=kind, threshold_thz=0.5, floor_thz=1.0, amplitude=0.04)
    cov = thermal_covariance(modes, 300.0, policy=policy)
    rep = cov.report
    assert rep.n_imaginary == n_im_expected and rep.flagged
    expected_min = -np.sqrt(s - (nu0.min() / TO_THZ) ** 2) * TO_THZ
    assert rep.min_frequency_thz == pytest.approx(expected_min, rel=1e-8)
    aff = ~modes.is_translation & (modes.frequencies < (1.0 if kind == "floor" else 0.5))
    assert rep.n_affected == aff.sum()
    sig = cov.sigma
    assert np.all(np.isfinite(sig)) and np.all(sig[modes.is_translation] == 0)
    ref = thermal_covariance(modes, 300.0, policy=ModeAmplitudePolicy("abs", threshold_thz=0.0))
    if kind == "exclude":
        assert np.all(sig[aff] == 0)
    elif kind == "abs":
        assert np.allclose(sig[aff], ref.sigma[aff])  # |ω| (all affected |ν| > 0.5 here)
    elif kind == "floor":
        floor_sigma = thermal_covariance(normal_modes(ph.supercell, fc0, ph.primitive), 300.0)
        one_thz = np.sqrt((0.5 * THZ_TO_EV / np.tanh(THZ_TO_EV / (2 * KB_EV * 300.0))) / (1.0 / TO_THZ) ** 2)
        assert np.allclose(sig[aff], one_thz) and floor_sigma.report.n_affected == 0
    else:
        pat = modes.displacement_patterns()[:, aff]
        rms = np.sqrt(sig[aff] ** 2 * np.sum(pat**2, axis=0) / modes.natom)
        assert np.allclose(rms, 0.04)
    # regular modes are untouched by the policy
    regular = ~modes.is_translation & ~aff
    assert np.allclose(sig[regular], ref.sigma[regular])
    res = sample_displacements(cov, supercell_to_ase(ph.supercell), 8, seed=5, max_displacement=0.3,
                               cap_mode="clip", label="NaCl-imag")
    norms = np.linalg.norm(res.displacements, axis=-1)
    assert np.all(np.isfinite(norms)) and norms.max() <= 0.3 + 1e-12
    assert res.settings["policy"] == policy.to_dict() and res.settings["cap_mode"] == "clip"
    assert res.to_dict()["covariance"]["report"]["n_imaginary"] == n_im_expected
    if kind == "exclude":  # unclipped samples have exactly no component on the excluded modes
        res = sample_displacements(cov, supercell_to_ase(ph.supercell), 8, seed=5, max_displacement=2.0)
        assert res.n_clipped_atoms == 0
        q = modes.mode_coordinates(res.displacements)
        assert np.abs(q[:, aff]).max() < 1e-10 < np.abs(q[:, regular]).max()


def test_cap_raises_with_label(nacl):
    ph, _, fc0 = nacl
    fc_im, _ = _imaginary_fc(ph, fc0, 2.0)
    cov = thermal_covariance(normal_modes(ph.supercell, fc_im, ph.primitive), 1000.0,
                             policy=ModeAmplitudePolicy("abs", threshold_thz=0.05))
    with pytest.raises(SamplingError) as err:
        sample_displacements(cov, supercell_to_ase(ph.supercell), 8, seed=0, max_displacement=0.2,
                             label="NaCl-capped")
    assert err.value.label == "NaCl-capped" and "NaCl-capped" in str(err.value)


def test_min_distance_check_names_material(nacl):
    ph, _, fc0 = nacl
    with pytest.raises(SamplingError) as err:
        thermal_samples(ph, 300.0, 2, force_constants=fc0, min_distance=2.9, label="NaCl-mindist")
    assert err.value.label == "NaCl-mindist" and "minimum distance" in str(err.value)
    ok = thermal_samples(ph, 300.0, 2, force_constants=fc0, label="NaCl-mindist")
    assert ok.min_distances.min() > 0.5 * 2.8


def test_seeds_reproducible_and_antithetic(si):
    ph, _, fc0 = si
    cov = thermal_covariance(normal_modes(ph.supercell, fc0, ph.primitive), 300.0)
    ref = supercell_to_ase(ph.supercell)
    for kind in ("gaussian", "fixed_amplitude"):
        a = sample_displacements(cov, ref, 6, kind=kind, seed=11, antithetic=True)
        b = sample_displacements(cov, ref, 6, kind=kind, seed=11, antithetic=True)
        c = sample_displacements(cov, ref, 6, kind=kind, seed=12, antithetic=True)
        assert np.array_equal(a.displacements, b.displacements)
        assert not np.allclose(a.displacements, c.displacements)
        assert np.array_equal(a.displacements[1::2], -a.displacements[0::2])
        assert np.allclose(a.supercells[2].positions - ref.positions, a.displacements[2])
        assert a.settings["seed"] == 11 and a.settings["kind"] == kind and a.settings["antithetic"]
    fixed = sample_displacements(cov, ref, 4, kind="fixed_amplitude", seed=3)
    q = cov.modes.mode_coordinates(fixed.displacements)
    assert np.allclose(np.abs(q), cov.sigma[None, :], atol=1e-12)  # |ξ_s| = 1 exactly


def test_gaussian_sample_covariance_converges_to_sigma(si):
    ph, _, fc0 = si
    cov = thermal_covariance(normal_modes(ph.supercell, fc0, ph.primitive), 600.0)
    n = 4000
    res = sample_displacements(cov, supercell_to_ase(ph.supercell), n, seed=2, antithetic=True)
    u = res.displacements.reshape(n, -1)
    emp = u.T @ u / n
    sig = cov.matrix
    # Wishart variance of each element from n/2 independent draws (± pairs are identical here)
    var = (np.outer(np.diag(sig), np.diag(sig)) + sig**2) / (n / 2)
    z = np.abs(emp - sig) / np.sqrt(var)
    assert z.max() < 5.0
    assert np.abs(emp - sig).max() < 0.15 * np.abs(sig).max()
    assert res.n_clipped_atoms == 0


def test_atom_order_does_not_change_gaussian_draws(si):
    ph, _, fc0 = si
    ref = supercell_to_ase(ph.supercell)
    cov = thermal_covariance(normal_modes(ph.supercell, fc0, method="supercell"), 300.0)
    perm = np.random.default_rng(0).permutation(len(ref))
    sq = np.arange(3 * len(ref)).reshape(-1, 3)[perm].reshape(-1)
    modes_p = normal_modes(ph.supercell, fc0, method="supercell")
    from tdphonon.sampling import NormalModes

    mp = NormalModes(modes_p.frequencies, modes_p.eigenvalues, modes_p.eigenvectors[sq],
                     modes_p.is_translation, modes_p.masses[perm], modes_p.qpoint_index, None, "supercell")
    cov_p = thermal_covariance(mp, 300.0)
    a = sample_displacements(cov, ref, 3, seed=7)
    b = sample_displacements(cov_p, ref[perm], 3, seed=7)
    assert np.allclose(b.displacements, a.displacements[:, perm], atol=1e-13)


def test_srtio3_soft_mode_is_flagged_and_sampled_safely():
    ph, proj, fc0 = symmetric_reference(SRTIO3)
    res = thermal_samples(ph, 300.0, 4, force_constants=fc0, projector=proj, seed=1, label="SrTiO3")
    rep = res.covariance.report
    assert rep.n_imaginary == 3 and rep.min_frequency_thz < -2.0 and rep.flagged
    assert rep.policy["kind"] == "abs"  # the default policy
    assert np.all(np.isfinite(res.displacements))
    assert np.linalg.norm(res.displacements, axis=-1).max() <= res.settings["max_displacement"]
