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
