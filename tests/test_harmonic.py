"""ML harmonic phonons: exactness on DFT force constants, real MLIPs, bad inputs, outputs."""

from __future__ import annotations

import json

import numpy as np
import phonopy
import pytest
from ase import Atoms
from pymatgen.core import Lattice, Structure

from conftest import REFERENCE, requires_reference
from tdphonon.analytic import ForceConstantPotential
from tdphonon.errors import RelaxationError, StructureError, UnsupportedElementsError
from tdphonon.evaluation import compare_with_reference, load_reference
from tdphonon.harmonic import (
    HarmonicSettings,
    check_step_sensitivity,
    choose_supercell_matrix,
    commensurate_qpoints,
    frequencies_at,
    harmonic_phonons,
)
from tdphonon.structures import from_phonopy_atoms, load_structure

OFF_GRID_Q = np.array([[0.1, 0.2, 0.3], [0.5, 0.25, 0.75], [0.37, 0.0, 0.11]])


def _dft_settings(ref_phonon) -> HarmonicSettings:
    return HarmonicSettings(relax=False, standardize=False,
                            supercell_matrix=tuple(map(tuple, np.asarray(ref_phonon.supercell_matrix).tolist())))


@requires_reference
@pytest.mark.parametrize("path", ["phonopy/test/phonopy_params_NaCl-fd.yaml.xz", "phonopy/example/MgO"])
def test_harmonic_analytic_reproduces_dft_frequencies(path):
    """tdphonon on F = -Φ_DFT u must give phonopy's DFT frequencies to 1e-3 THz (any q)."""
    ref = load_reference(REFERENCE / path).phonon
    pot = ForceConstantPotential.from_phonopy(ref)
    res = harmonic_phonons(from_phonopy_atoms(ref.unitcell), pot, _dft_settings(ref), label=path)
    q = np.vstack([commensurate_qpoints(ref), OFF_GRID_Q])
    np.testing.assert_allclose(frequencies_at(res.phonon, q), frequencies_at(ref, q), atol=1e-3)
    assert not res.properties.imaginary.has_imaginary
    # acoustic sum rule
    assert np.abs(res.force_constants.sum(axis=1)).max() < 1e-8


@requires_reference
def test_harmonic_detects_broken_physics(nacl_fd):
    """A perturbed potential must NOT pass the 1e-3 THz comparison (the test can fail)."""
    pot = ForceConstantPotential(ForceConstantPotential.from_phonopy(nacl_fd).reference,
                                 nacl_fd.force_constants * 1.01)
    res = harmonic_phonons(from_phonopy_atoms(nacl_fd.unitcell), pot, _dft_settings(nacl_fd))
    q = commensurate_qpoints(nacl_fd)
    assert np.abs(frequencies_at(res.phonon, q) - frequencies_at(nacl_fd, q)).max() > 1e-2


# ----------------------------------------------------------------------------- step check
# ν² (THz²) per force constant / mass in eV/Å²/amu: (1/2π)·sqrt(eV/(Å²·amu)) in THz, squared
_THZ2 = (np.sqrt(1.602176634e-19 / (1e-20 * 1.66053906660e-27)) / (2 * np.pi * 1e12)) ** 2


def _si_onsite_potential(lam: float, shift: float = 0.0):
    """(Si DFT phonopy object, ForceConstantPotential Φ_DFT − shift·P + on-site quartic λ).

    P = (δ_ij − 1/N) ⊗ I₃ is the on-site constant made translation invariant: for this monatomic
    crystal it lowers every ν² but the three Γ acoustic ones by shift·_THZ2/m exactly. A finite
    displacement u = h·n (unit vector n) sees the on-site quartic (force −λu³) as an extra on-site
    constant −F·u/|u|² = λh²·Σₐnₐ⁴ (isotropic at a cubic site), which the sum-rule projection turns
    into +λh²Σnₐ⁴·P: so ν²(h) = ν₀² + (λh²Σnₐ⁴ − shift)·_THZ2/m.
    """
    ref = load_reference(REFERENCE / "phonopy/test/phonopy_params_Si.yaml").phonon
    n = len(ref.supercell)
    proj = np.einsum("ij,ab->ijab", np.eye(n) - 1.0 / n, np.eye(3))
    base = ForceConstantPotential.from_phonopy(ref)
    return ref, ForceConstantPotential(base.reference, base.fc - shift * proj, quartic=lam)


def _sum_n4(ref) -> float:
    """Σₐnₐ⁴ of the direction phonopy displaces the Si atom along (one symmetry-distinct displacement)."""
    ph = phonopy.Phonopy(ref.unitcell, supercell_matrix=ref.supercell_matrix, primitive_matrix=ref.primitive_matrix)
    ph.generate_displacements(distance=0.01, is_plusminus="auto")
    d = np.asarray([x[1:] for x in ph.displacements], dtype=float)
    s4 = np.sum((d / np.linalg.norm(d, axis=1, keepdims=True)) ** 4, axis=1)
    assert np.ptp(s4) < 1e-12
    return float(s4[0])


def test_step_check_settings_are_inert_when_off():
    """Without the check the settings dict and digest are those of the versions before it (campaign keys)."""
    assert HarmonicSettings().digest() == "f7e3e1fb8402f07321f5830fe17dbabad48ff25f9cd5daaadf8c2d93b4fed381"
    assert HarmonicSettings(displacement=0.03, supercell_matrix=(2, 2, 2)).digest() == (
        "c3ceb48c85ed26b6e7eb8d79569a2e84ce0715ad1a8363d1ea01c66cb57d4713")
    assert "check_displacement" not in HarmonicSettings().to_dict()
    on = HarmonicSettings(check_displacement=0.03)
    assert on.to_dict()["check_displacement"] == 0.03 and on.digest() != HarmonicSettings().digest()
    from tdphonon.jobs import harmonic_settings_from_dict

    assert harmonic_settings_from_dict(on.to_dict()) == on
    assert harmonic_settings_from_dict(HarmonicSettings().to_dict()).check_displacement is None
    for bad, match in (({"check_displacement": 0.0}, "positive"), ({"check_displacement": 0.01}, "must differ"),
                       ({"check_tol_thz": -1.0}, "check_tol_thz"), ({"displacement": float("nan")}, "displacement")):
        with pytest.raises(ValueError, match=match):
            HarmonicSettings(**bad)


@requires_reference
@pytest.mark.parametrize("lam", [0.0, 100.0])
def test_step_check_closed_form_on_site_quartic(lam):
    """Harmonic potential: no change between steps. On-site quartic λ: ν²(h₂) − ν²(h₁) = λ(h₂² − h₁²)·_THZ2/m."""
    ref, pot = _si_onsite_potential(lam)
    s = HarmonicSettings(**{**_dft_settings(ref).__dict__, "check_displacement": 0.05})
    res = harmonic_phonons(from_phonopy_atoms(ref.unitcell), pot, s, label="Si-quartic")
    chk = res.step_check
    f1, f2 = res.properties.commensurate_frequencies, chk.frequencies
    if lam == 0.0:
        assert chk.max_change_thz < 1e-6 and not chk.step_sensitive and chk.message is None
        np.testing.assert_allclose(f1, frequencies_at(ref, commensurate_qpoints(ref)), atol=1e-6)
    else:
        expected = lam * _sum_n4(ref) * (0.05**2 - 0.01**2) * _THZ2 / 28.0855
        d2 = np.sign(f2) * f2**2 - np.sign(f1) * f1**2
        gamma = np.all(np.isclose(commensurate_qpoints(res.phonon), 0.0), axis=1)
        np.testing.assert_allclose(d2[~gamma], expected, rtol=1e-6)
        np.testing.assert_allclose(d2[gamma][:, 3:], expected, rtol=1e-6)  # Γ optical
        assert np.abs(d2[gamma][:, :3]).max() < 1e-6  # Γ acoustic
        assert chk.step_sensitive and chk.max_change_thz == pytest.approx(np.abs(f2 - f1).max())
        assert "Si-quartic" in chk.message and "depend on the step" in chk.message
    assert not chk.imaginary_step_dependent
    assert chk.force_calls == res.fc_stats["force_calls"]  # one more force set, counted in the total
    assert res.fc_stats["force_calls_total"] == 2 * res.fc_stats["force_calls"]
    assert res.summary()["step_check"]["max_change_thz"] == chk.max_change_thz
    assert "frequencies" not in res.summary()["step_check"]


@requires_reference
def test_step_check_flags_imaginary_modes_of_one_step_only():
    """A mode imaginary at 0.01 Å and real at 0.1 Å (what CHGNet does to fcc Al) is named in the check."""
    ref0 = load_reference(REFERENCE / "phonopy/test/phonopy_params_Si.yaml").phonon
    f0 = frequencies_at(ref0, commensurate_qpoints(ref0))
    k = _THZ2 / 28.0855
    shift = (np.sort(f0.ravel())[3] ** 2 + 1.0) / k  # lowest non-acoustic ν² → −1 THz² before the quartic
    h1, h2 = 0.01, 0.1
    lam = (shift + 2.0 / k) / (h2**2 * _sum_n4(ref0))  # at h2 every ν² is 2 THz² above the unshifted ν₀²
    ref, pot = _si_onsite_potential(lam, shift)
    s = HarmonicSettings(**{**_dft_settings(ref).__dict__, "displacement": h1, "check_displacement": h2})
    res = harmonic_phonons(from_phonopy_atoms(ref.unitcell), pot, s, label="Si-double-well")
    chk = res.step_check
    assert res.properties.imaginary.has_imaginary  # the result keeps the primary step's Φ⁰
    assert chk.n_imaginary_commensurate["displacement"] > 0 and chk.n_imaginary_commensurate["check"] == 0
    assert chk.min_frequency_thz["displacement"] < -0.5 < 0 < chk.min_frequency_thz["check"]
    assert chk.imaginary_step_dependent and chk.step_sensitive
    assert "Si-double-well" in chk.message and "one finite-displacement step only" in chk.message
    # the function on its own gives the same check and leaves the phonopy object as it was
    fc = res.force_constants.copy()
    again = check_step_sensitivity(res.phonon, pot, h1, h2, label="Si-double-well")
    assert again.to_dict() | {"seconds": 0} == chk.to_dict() | {"seconds": 0}
    np.testing.assert_array_equal(res.force_constants, fc)


@pytest.mark.mlip
def test_si_sevennet(si_structure, sevennet, tmp_path):
    res = harmonic_phonons(si_structure, sevennet, HarmonicSettings(), label="Si")
    s = res.summary()
    assert s["spacegroup"]["number"] == 227
    assert res.relax.converged and res.relax.spacegroup_after == res.relax.spacegroup_before
    a = res.structure.lattice.abc[0]
    assert 5.40 < a < 5.50
    assert not res.properties.imaginary.has_imaginary
    # Γ: three acoustic ~0 and three optical degenerate modes
    fg = frequencies_at(res.phonon, [[0, 0, 0]])[0]
    assert np.abs(fg[:3]).max() < 0.05
    assert np.ptp(fg[3:]) < 0.01 and 11.0 < fg[3] < 16.5
    assert s["model"]["sha256"] == sevennet.identity.sha256
    files = res.save(tmp_path)
    back = phonopy.load(str(files["phonopy_yaml"]), log_level=0)
    np.testing.assert_allclose(frequencies_at(back, OFF_GRID_Q), frequencies_at(res.phonon, OFF_GRID_Q), atol=1e-6)
    summary = json.loads(files["summary_json"].read_text())
    assert summary["model"]["sha256"] == sevennet.identity.sha256
    assert summary["thermal_300K"] if "thermal_300K" in summary else summary["phonons"]["thermal_300K"]


@pytest.mark.mlip
def test_cubic_srtio3_keeps_symmetry_and_reports_soft_modes(srtio3_cif, chgnet):
    """Cubic SrTiO3 is a saddle point: relaxation must stay Pm-3m and the soft modes must be flagged."""
    res = harmonic_phonons(srtio3_cif, chgnet, HarmonicSettings(supercell_matrix=(2, 2, 2)), label="SrTiO3")
    assert res.relax.spacegroup_after == "Pm-3m"
    im = res.properties.imaginary
    assert im.has_imaginary and im.min_frequency < -1.0
    imag_q = [np.round(q, 3).tolist() for q, _ in im.imaginary_qpoints]
    assert [0.5, 0.5, 0.5] in imag_q  # R-point octahedral tilt
    assert im.n_imaginary_commensurate >= 3


@pytest.mark.mlip
@requires_reference
def test_m3gnet_close_to_other_mlips_and_dft(m3gnet, sevennet, chgnet):
    """Universal M3GNet on the DFT supercells of Si and MgO: close to CHGNet/SevenNet and DFT."""
    for path, tol_dft in [("phonopy/test/phonopy_params_Si.yaml", 3.0), ("phonopy/example/MgO", 1.6)]:
        ref = load_reference(REFERENCE / path)
        c_m3g = compare_with_reference(ref, m3gnet)
        c_7n = compare_with_reference(ref, sevennet)
        c_chg = compare_with_reference(ref, chgnet)
        assert c_m3g.mae_thz < tol_dft, (path, c_m3g.mae_thz)
        f_m3g = np.array(c_m3g.frequencies_ml)
        for other in (c_7n, c_chg):
            assert np.mean(np.abs(f_m3g - np.array(other.frequencies_ml))) < 2.5


def test_random_m3gnet_end_to_end(random_m3gnet_dir, si_structure, tmp_path):
    from tdphonon.potentials import load_potential

    pot = load_potential(random_m3gnet_dir, device="cpu")
    res = harmonic_phonons(si_structure, pot, HarmonicSettings(relax=False, supercell_matrix=(1, 1, 1)), label="Si")
    assert np.all(np.isfinite(res.properties.commensurate_frequencies))
    assert res.summary()["model"]["kind"] == "matgl"
    res.save(tmp_path)


# ----------------------------------------------------------------------------- bad inputs
def test_overlapping_atoms():
    s = Structure(Lattice.cubic(4.0), ["Na", "Cl"], [[0, 0, 0], [0.05, 0, 0]])
    with pytest.raises(StructureError, match="overlapping"):
        load_structure(s, "NaCl-bad")


def test_partial_occupancy():
    s = Structure(Lattice.cubic(4.0), [{"Na": 0.5, "K": 0.5}, "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    with pytest.raises(StructureError, match="partial occupancies"):
        load_structure(s, "NaKCl")


def test_not_3d_periodic():
    mol = Atoms("H2O", positions=[[0, 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0]], cell=[10, 10, 10],
                pbc=[True, True, False])
    with pytest.raises(StructureError, match="not periodic in 3D"):
        load_structure(mol, "water")


def test_vacuum_padded_slab():
    s = Structure(Lattice.orthorhombic(3, 3, 200), ["Cu"], [[0, 0, 0]])
    with pytest.raises(StructureError, match="3D crystal"):
        load_structure(s, "Cu-slab")


def test_malformed_cif(tmp_path):
    p = tmp_path / "broken.cif"
    p.write_text("data_broken\n_cell_length_a 4.0\nthis is not a cif\n")
    with pytest.raises(StructureError, match="broken"):
        load_structure(p)


def test_unsupported_element_in_harmonic(nacl_fd, si_structure):
    pot = ForceConstantPotential.from_phonopy(nacl_fd)  # covers Na, Cl only
    with pytest.raises(UnsupportedElementsError, match=r"\['Si'\]"):
        harmonic_phonons(si_structure, pot, HarmonicSettings(relax=False), label="Si-in-NaCl-model")


@pytest.mark.mlip
def test_relaxation_not_converged_is_reported(si_structure, sevennet):
    strained = si_structure.copy()
    strained.apply_strain(0.04)
    with pytest.raises(RelaxationError, match="did not converge in 2 steps"):
        harmonic_phonons(strained, sevennet, HarmonicSettings(relax_steps=2, fmax=1e-4), label="Si-strained")


def test_supercell_choice():
    s = Structure(Lattice.cubic(3.9), ["Sr"], [[0, 0, 0]])
    np.testing.assert_array_equal(np.diag(choose_supercell_matrix(s, 10.0, 1000)), [3, 3, 3])
    np.testing.assert_array_equal(np.diag(choose_supercell_matrix(s, 10.0, 8)), [2, 2, 2])
    t = Structure(Lattice.tetragonal(3.0, 12.0), ["Sr"], [[0, 0, 0]])
    np.testing.assert_array_equal(np.diag(choose_supercell_matrix(t, 10.0, 1000)), [4, 4, 1])


def test_invalid_supercell_matrix(nacl_fd):
    pot = ForceConstantPotential.from_phonopy(nacl_fd)
    with pytest.raises(StructureError, match="invalid supercell"):
        harmonic_phonons(from_phonopy_atoms(nacl_fd.unitcell), pot,
                         HarmonicSettings(relax=False, supercell_matrix=(0, 1, 1)))
