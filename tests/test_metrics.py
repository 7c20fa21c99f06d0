"""Tests of tdphonon.metrics (R_full, R_onsite, frequency shift, thermodynamics, σᴬ)."""

from __future__ import annotations

import numpy as np
import pytest

from _refdata import NACL_FD, SI, requires_reference, symmetric_reference
from tdphonon.metrics import (
    anharmonicity_score,
    equivalent_atoms,
    frequency_shift,
    harmonic_thermal_properties,
    onsite_report,
    r_full,
    r_full_noise_floor,
    r_onsite,
    significant_elements,
)
from tdphonon.sampling import (
    fc_to_matrix,
    normal_modes,
    sample_displacements,
    supercell_to_ase,
    thermal_covariance,
)


@pytest.fixture(scope="module")
def nacl():
    if not NACL_FD.is_file():
        pytest.skip(f"reference file {NACL_FD} not available")
    return symmetric_reference(NACL_FD)


def _toy_fc(n=4, seed=0):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(3 * n, 3 * n))
    fc = (a + a.T).reshape(n, 3, n, 3).transpose(0, 2, 1, 3).copy()
    fc[0, 1] = 0.0  # a "symmetry-forbidden" block
    fc[0, 2, 0, 0] = 1e-4 * np.abs(fc).max()  # a negligible element
    return fc


def test_r_full_exact_values_and_masking():
    fc0 = _toy_fc()
    assert r_full(fc0, fc0) == 0.0
    # uniform 10 % stiffening: every element contributes 0.1 / 1.05
    assert r_full(1.1 * fc0, fc0) == pytest.approx(0.1 / 1.05, rel=1e-12)
    mask = significant_elements(fc0)
    assert not mask[0, 1].any() and not mask[0, 2, 0, 0]
    # noise on masked elements (zero or < 1 % of max|Φ⁰|) does not change R_full ...
    noisy = fc0.copy()
    noisy[0, 1] += 1e-3
    noisy[0, 2, 0, 0] *= 3.0
    assert r_full(noisy, fc0) == pytest.approx(0.0, abs=1e-15)
    # ... but it would dominate without the mask (each such element counts up to 2)
    assert r_full(noisy, fc0, rel_threshold=0.0) > 1e-3
    # an explicit mask overrides the threshold
    only = np.zeros_like(mask)
    only[1, 1, 0, 0] = True
    t = fc0.copy()
    t[1, 1, 0, 0] *= 2.0
    assert r_full(t, fc0, mask=only) == pytest.approx(1.0 / 1.5)


def test_noise_floor_is_r_full_between_estimates():
    fc0 = _toy_fc()
    rng = np.random.default_rng(1)
    a = fc0 + 0.01 * rng.normal(size=fc0.shape)
    b = fc0 + 0.01 * rng.normal(size=fc0.shape)
    assert r_full_noise_floor(a, a, fc0) == 0.0
    floor = r_full_noise_floor(a, b, fc0)
    assert floor == pytest.approx(r_full(a, b, mask=significant_elements(fc0)))
    assert 0 < floor < 0.2


@requires_reference
def test_r_onsite_per_atom_and_per_site(nacl):
    ph, _, fc0 = nacl
    n = len(ph.supercell)
    idx = np.arange(n)
    na = np.array([s == "Na" for s in ph.supercell.symbols])
    fct = fc0.copy()
    fct[idx[na], idx[na]] *= 1.2  # Na on-site blocks 20 % stiffer
    per = r_onsite(fct, fc0)
    assert np.allclose(per[na], 0.2) and np.allclose(per[~na], 0.0)
    rep = onsite_report(fct, fc0, ph.supercell)
    assert rep.maximum == pytest.approx(0.2)
    assert len(rep.sites) == 2
    by_symbol = {s["symbol"]: s for s in rep.sites}
    assert by_symbol["Na"]["multiplicity"] == 32 and by_symbol["Cl"]["multiplicity"] == 32
    assert by_symbol["Na"]["r_onsite"] == pytest.approx(0.2) and by_symbol["Na"]["spread"] < 1e-12
    assert by_symbol["Na"]["trace_t"] == pytest.approx(1.2 * by_symbol["Na"]["trace_0"])
    # same grouping from phonopy's map and from spglib on an ASE copy
    eq_ase = equivalent_atoms(supercell_to_ase(ph.supercell))
    assert np.array_equal(eq_ase, equivalent_atoms(ph.supercell))
    rep2 = onsite_report(fct, fc0, ph.supercell, equivalent=ph.symmetry.get_map_atoms())
    assert [s["multiplicity"] for s in rep2.sites] == [32, 32]


def test_frequency_shift_definition():
    q = np.array([[0, 0, 0], [0.5, 0, 0]])
    f0 = np.array([[-1e-4, 0.0, 2e-4, 3.0, 3.0, 5.0], [1.0, 1.0, 2.0, 3.0, 4.0, 5.0]])
    ft = 1.05 * f0
    ft[0, :3] = [0.3, -0.2, 0.1]  # Γ acoustic noise is excluded
    assert frequency_shift(ft, f0, q) == pytest.approx(0.05, rel=1e-12)
    # without q-points nothing is excluded and the acoustic noise counts
    assert frequency_shift(ft, f0) > 0.05
    # imaginary as negative: a mode going from 1 THz to 1i THz changes by 2 THz
    fi = f0.copy()
    fi[1, 0] = -1.0
    norm0 = np.linalg.norm(f0[1].tolist() + f0[0, 3:].tolist())
    assert frequency_shift(fi, f0, q) == pytest.approx(2.0 / norm0)
    with pytest.raises(ValueError):
        frequency_shift(ft[:1], f0, q)


@requires_reference
def test_harmonic_thermal_properties_scale_with_frequency():
    ph, _, fc0 = symmetric_reference(SI)
    temps = [100.0, 300.0, 600.0, 2000.0]
    tp = harmonic_thermal_properties(ph, fc0, temps, mesh=(8, 8, 8))
    ph.run_mesh([8, 8, 8], is_gamma_center=True)
    ph.run_thermal_properties(temperatures=temps)
    _, free_energy, entropy, _ = ph.thermal_properties.thermal_properties
    assert np.allclose(tp.free_energy, free_energy) and np.allclose(tp.entropy, entropy)
    # Dulong–Petit: C_v → 3 n_atoms R per mole of primitive cells (Si: 2 atoms)
    r_gas = 8.314462618
    assert tp.heat_capacity[-1] == pytest.approx(3 * len(ph.primitive) * r_gas, rel=0.01)
    # 4Φ doubles every frequency: S and C_v depend on ω/T only, so S(2T; 4Φ) = S(T; Φ)
    tp4 = harmonic_thermal_properties(ph, 4.0 * fc0, [200.0, 600.0], mesh=(8, 8, 8))
    assert np.allclose(tp4.entropy, tp.entropy[:2], rtol=1e-8)
    assert np.allclose(tp4.heat_capacity, tp.heat_capacity[:2], rtol=1e-8)
    assert tp.n_imaginary == 0 and tp.to_dict()["units"]["free_energy"] == "kJ/mol"


@requires_reference
def test_anharmonicity_score(nacl):
    ph, _, fc0 = nacl
    cov = thermal_covariance(normal_modes(ph.supercell, fc0, ph.primitive), 300.0)
    u = sample_displacements(cov, supercell_to_ase(ph.supercell), 4, seed=0).displacements
    phi = fc_to_matrix(fc0)
    f_h = -(u.reshape(4, -1) @ phi.T).reshape(u.shape)
    assert anharmonicity_score(u, f_h, fc0) < 1e-12
    assert anharmonicity_score(u, 2.0 * f_h, fc0) == pytest.approx(0.5)
    lam = 5.0
    f_q = f_h - lam * u**3
    expected = np.sqrt(np.sum((lam * u**3) ** 2) / np.sum(f_q**2))
    assert anharmonicity_score(u, f_q, fc0) == pytest.approx(expected)
    assert anharmonicity_score(u[0], f_q[0], fc0) > 0
