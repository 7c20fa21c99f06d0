"""Fine-tuning data: database readers (phonopy, FORCE_CONSTANTS, ALAMODE, MDR folders) and the
force–displacement data set builder (F = −Φu, split by compound, extxyz + manifest).

Synthetic sources are built from a nearest-neighbour spring model on a 16-atom rocksalt
supercell (exactly harmonic, so every number can be checked exactly); tests that read
``../shared/reference`` skip when it is absent.
"""

from __future__ import annotations

import json
import lzma
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest

from conftest import REFERENCE, requires_reference
from tdphonon.finetune import (
    DataError,
    DatasetSettings,
    HarmonicEntry,
    build_dataset,
    compound_configurations,
    estimate_energy0,
    harmonic_energies,
    harmonic_forces,
    load_dataset,
    mode_weighted_displacements,
    random_displacements,
    read_alamode,
    read_alamode_input,
    read_database,
    read_dfset,
    read_entry,
    read_phonopy,
    split_by_compound,
    write_dataset,
    write_dfset,
)
from tdphonon.finetune.sources import BOHR, RY_PER_BOHR, ForceSet, iter_reference_entries
from tdphonon.sampling import full_force_constants, normal_modes, supercell_to_ase

ALAMODE_STO = REFERENCE / "alamode" / "SrTiO3"
NACL_RD = REFERENCE / "phonopy" / "test" / "phonopy_params_NaCl-rd.yaml.xz"
NACL_FD = REFERENCE / "phonopy" / "test" / "phonopy_params_NaCl-fd.yaml.xz"


# --------------------------------------------------------------------------------------------
# synthetic harmonic crystals
# --------------------------------------------------------------------------------------------
def _spring_fc(supercell, k1: float = 1.5, k2: float = 0.3, r1: float = 3.0, r2: float = 4.1) -> np.ndarray:
    """Central springs to 1st (k1) and 2nd (k2) neighbours, summed over periodic images: symmetric, ASR exact."""
    pos = np.asarray(supercell.positions)
    lat = np.asarray(supercell.cell)
    n = len(pos)
    fc = np.zeros((n, n, 3, 3))
    shifts = np.array([[a, b, c] for a in (-1, 0, 1) for b in (-1, 0, 1) for c in (-1, 0, 1)]) @ lat
    for i in range(n):
        r = pos[:, None, :] + shifts[None] - pos[i]
        d = np.linalg.norm(r, axis=-1)
        mask = (d > 1e-8) & (d <= r2)
        k = np.where(d <= r1, k1, k2)
        blk = np.where(mask[..., None, None], k[..., None, None] * r[..., :, None] * r[..., None, :]
                       / np.maximum(d, 1e-8)[..., None, None] ** 2, 0.0).sum(axis=1)  # (n, 3, 3)
        fc[i] -= blk
        fc[i, i] += blk.sum(axis=0)
    return fc


def _toy_phonon(symbols=("Na", "Cl"), a: float = 5.64):
    """Rocksalt primitive cell, 2x2x2 supercell (16 atoms), FD data set with harmonic forces; (phonon, Φ)."""
    from phonopy import Phonopy
    from phonopy.structure.atoms import PhonopyAtoms

    uc = PhonopyAtoms(symbols=list(symbols), cell=a / 2 * np.array([[0, 1, 1], [1, 0, 1], [1, 1, 0]]),
                      scaled_positions=[[0, 0, 0], [0.5, 0.5, 0.5]])
    ph = Phonopy(uc, supercell_matrix=2 * np.eye(3, dtype=int), primitive_matrix=np.eye(3))
    fc = _spring_fc(ph.supercell)
    ph.generate_displacements(distance=0.01)
    u = np.array([s.positions - ph.supercell.positions for s in ph.supercells_with_displacements])
    ph.forces = -np.einsum("ijab,kjb->kia", fc, u)
    ph.produce_force_constants()
    return ph, fc


def _save_params(ph, path: Path, compress: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix("") if compress else path
    ph.save(str(tmp))
    if compress:
        path.write_bytes(lzma.compress(tmp.read_bytes()))
        tmp.unlink()
    return path


def _save_disp_force_sets(ph, folder: Path) -> Path:
    from phonopy.file_IO import write_FORCE_SETS

    folder.mkdir(parents=True, exist_ok=True)
    ph.save(str(folder / "phonopy_disp.yaml"), settings={"force_sets": False, "displacements": True,
                                                          "force_constants": False})
    write_FORCE_SETS(ph.dataset, str(folder / "FORCE_SETS"))
    return folder


def _save_alamode(ph, fc: np.ndarray, folder: Path) -> Path:
    """ALAMODE input (supercell, Bohr) + harmonic DFSET (Bohr, Ry/Bohr) of the toy FD set."""
    folder.mkdir(parents=True, exist_ok=True)
    sc = ph.supercell
    kinds = list(dict.fromkeys(sc.symbols))
    lat_bohr = np.asarray(sc.cell) / BOHR
    scale = 10.0
    lines = ["&general", " PREFIX = toy", " MODE = optimize", f" NAT = {len(sc)}; NKD = {len(kinds)}",
             " KD = " + " ".join(kinds), "/", "", "&interaction", " NORDER = 1", "/", "",
             "&optimize", " DFSET = DFSET_harmonic", "/", "", "&cell", f"{scale}"]
    lines += [" ".join(f"{x:.12f}" for x in row / scale) for row in lat_bohr] + ["/", "", "&position"]
    lines += [f" {kinds.index(s) + 1} " + " ".join(f"{x:.12f}" for x in p)
              for s, p in zip(sc.symbols, sc.scaled_positions, strict=True)]
    lines += ["/"]
    (folder / "ALM.in").write_text("\n".join(lines) + "\n")
    u = np.array([s.positions - sc.positions for s in ph.supercells_with_displacements])
    write_dfset(folder / "DFSET_harmonic", u, harmonic_forces(fc, u))
    return folder


@pytest.fixture(scope="module")
def toy():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return _toy_phonon()


@pytest.fixture(scope="module")
def toy_entry(tmp_path_factory, toy):
    ph, _ = toy
    path = _save_params(ph, tmp_path_factory.mktemp("toy") / "phonopy_params.yaml")
    return read_phonopy(path, label="toy-NaCl")


# --------------------------------------------------------------------------------------------
# F = −Φu
# --------------------------------------------------------------------------------------------
def test_harmonic_forces_are_exact(toy, toy_entry):
    from tdphonon.analytic import ForceConstantPotential

    _, fc_true = toy
    fc = toy_entry.force_constants
    np.testing.assert_allclose(fc, fc_true, atol=1e-10)  # phonopy FD recovers the spring model
    # the phonopy data set's own forces (written to the yaml) are −Φu
    (fd,) = toy_entry.raw_displacement_sets
    assert fd.kind == "fd" and fd.n_configurations == 2
    np.testing.assert_allclose(harmonic_forces(fc, fd.displacements), fd.forces, atol=1e-8)
    # a displaced supercell: the analytic harmonic potential gives the same forces and energies
    u = random_displacements(len(fc), 3, seed=7)
    ref = toy_entry.reference_atoms()
    pot = ForceConstantPotential(ref, fc, energy0=-12.5)
    cells = []
    for k in range(3):
        a = ref.copy()
        a.positions += u[k]
        cells.append(a)
    e_pot, f_pot = pot.energies_and_forces(cells)
    np.testing.assert_allclose(harmonic_forces(fc, u), np.asarray(f_pot), atol=1e-10)
    np.testing.assert_allclose(harmonic_energies(fc, u, -12.5), e_pot, atol=1e-10)
    # explicit tensor product on one configuration
    direct = -np.array([sum(fc[i, j] @ u[0, j] for j in range(len(fc))) for i in range(len(fc))])
    np.testing.assert_allclose(harmonic_forces(fc, u[0]), direct, atol=1e-12)


@requires_reference
def test_dft_force_constants_reproduce_dft_forces():
    """−Φ_DFT u against the DFT forces of the sets Φ was fitted to (PBE NaCl, phonopy test data)."""
    for path, tol in ((NACL_FD, 0.03), (NACL_RD, 0.08)):  # measured 1.2 % and 4.8 %
        entry = read_phonopy(path)
        fc = entry.force_constants
        (fs,) = entry.raw_displacement_sets
        pred = harmonic_forces(fc, fs.displacements)
        rel = np.linalg.norm(pred - fs.forces) / np.linalg.norm(fs.forces)
        assert rel < tol, (path.name, rel)


def test_random_displacements_range_and_seed():
    u = random_displacements(40, 10, (0.01, 0.05), seed=3)
    norms = np.linalg.norm(u, axis=-1)
    assert u.shape == (10, 40, 3)
    assert norms.min() >= 0.01 - 1e-12 and norms.max() <= 0.05 + 1e-12
    assert norms.max() - norms.min() > 0.03  # the whole range is used
    np.testing.assert_array_equal(u, random_displacements(40, 10, (0.01, 0.05), seed=3))
    assert not np.allclose(u, random_displacements(40, 10, (0.01, 0.05), seed=4))
    directions = u / norms[..., None]
    assert np.abs(directions.reshape(-1, 3).mean(axis=0)).max() < 0.15


# --------------------------------------------------------------------------------------------
# ALAMODE
# --------------------------------------------------------------------------------------------
def _frequency_weights(phonon, fc, u):
    """Per non-translational mode s: mean over configurations of (ν_s Q_s)², and the |ν_s| (THz).

    (ν_s Q_s)² is what a frequency error δν_s costs in force: δF_s ∝ δ(ν_s²) Q_s = 2 δν_s (ν_s Q_s).
    """
    modes = normal_modes(phonon.supercell, fc, phonon.primitive)
    q = modes.mode_coordinates(u)[:, ~modes.is_translation]
    nu = np.abs(modes.frequencies[~modes.is_translation])
    return np.mean((nu * q) ** 2, axis=0), nu


def test_mode_weighted_displacements_weight_every_frequency_alike(toy):
    ph, fc = toy
    n = 600
    u, rec = mode_weighted_displacements(ph, n, (0.02, 0.04), force_constants=fc, floor_thz=0.05, seed=3)
    assert u.shape == (n, 16, 3)
    largest = np.max(np.linalg.norm(u, axis=-1), axis=-1)  # no atom moves further than asked
    assert largest.min() >= 0.02 - 1e-12 and largest.max() <= 0.04 + 1e-12
    np.testing.assert_allclose(np.array(rec["max_displacement"]), largest, rtol=1e-12)
    masses = np.asarray(ph.supercell.masses)
    np.testing.assert_allclose(np.einsum("i,kia->ka", masses, u), 0.0, atol=1e-10)  # no translation
    w, nu = _frequency_weights(ph, fc, u)
    assert nu.max() / nu.min() > 2.5  # the toy crystal has a real spread of frequencies
    # every mode's frequency error costs the same force (statistical spread of 600 samples: ~6 %)
    assert w.max() / w.min() < 1.5
    # random Cartesian displacements favour the stiff modes by ∝ ν²: the weights follow ν², not 1
    w_rand, _ = _frequency_weights(ph, fc, random_displacements(16, n, (0.02, 0.04), seed=3))
    slope = np.polyfit(np.log(nu), np.log(w_rand), 1)[0]
    assert slope > 1.5
    assert abs(np.polyfit(np.log(nu), np.log(w), 1)[0]) < 0.2
    # same seed, same displacements; the floor bounds the weight of near-zero modes
    np.testing.assert_array_equal(u, mode_weighted_displacements(ph, n, (0.02, 0.04), force_constants=fc,
                                                                 floor_thz=0.05, seed=3)[0])
    floor = 0.5 * (nu.min() + nu.max())
    uf, recf = mode_weighted_displacements(ph, n, (0.02, 0.04), force_constants=fc, floor_thz=floor, seed=3)
    wf, _ = _frequency_weights(ph, fc, uf)
    low = nu < floor
    assert recf["n_below_floor"] == int(low.sum()) > 0
    # below the floor the mode amplitude is that of the floor: (ν Q)² falls as ν² there
    ratio = (wf[low] / (nu[low] / floor) ** 2).mean() / wf[~low].mean()
    assert 0.75 < ratio < 1.33
    with pytest.raises(ValueError, match="floor_thz"):
        mode_weighted_displacements(ph, 2, force_constants=fc, floor_thz=0.0)


def test_dataset_with_mode_weighted_configurations(toy_entry):
    fc = toy_entry.force_constants
    ref = toy_entry.reference_atoms()
    plain, rec0 = compound_configurations(toy_entry, DatasetSettings(n_random=3, seed=2))
    structs, rec = compound_configurations(toy_entry, DatasetSettings(n_random=3, n_modes=4, seed=2))
    assert rec["counts"] == {"random": 3, "modes": 4}
    assert set(rec["seeds"]) == {"random", "modes"} and rec["seeds"]["random"] == rec0["seeds"]["random"]
    # adding mode-weighted configurations leaves the random ones unchanged
    np.testing.assert_array_equal(np.array([a.positions for a in structs[:3]]),
                                  np.array([a.positions for a in plain]))
    modes = [a for a in structs if a.info["kind"] == "modes"]
    assert len(modes) == 4 and 0 <= rec["modes"]["soft_mode_share"] <= 1 and rec["modes"]["n_imaginary"] == 0
    for a in modes:
        u = a.positions - ref.positions
        assert 0.01 - 1e-12 <= np.linalg.norm(u, axis=1).max() <= 0.05 + 1e-12
        np.testing.assert_allclose(a.get_forces(), harmonic_forces(fc, u), atol=1e-12)
    with pytest.raises(ValueError, match="n_modes"):
        DatasetSettings(n_modes=-1)
    assert DatasetSettings.from_dict(DatasetSettings(n_modes=5).to_dict()).n_modes == 5


@requires_reference
def test_extra_mode_configurations_only_for_unstable_compounds(toy_entry):
    """``n_modes_unstable`` adds mode-weighted configurations to a compound with an unstable DFT mode (cubic
    SrTiO3: R at −2.29 THz) and to no other; the ``n_modes`` ones stay the same configurations."""
    st = DatasetSettings(n_random=1, n_modes=2, n_modes_unstable=3, seed=4)
    plain = DatasetSettings(n_random=1, n_modes=2, seed=4)
    _, rec = compound_configurations(toy_entry, st)
    assert rec["counts"]["modes"] == 2 and not rec["modes"]["unstable"] and "modes_unstable" not in rec["seeds"]
    assert rec["modes"]["min_frequency_thz"] > 0
    sto = read_alamode(ALAMODE_STO, label="alamode-SrTiO3")
    more, rec = compound_configurations(sto, st)
    assert rec["modes"]["unstable"] and rec["modes"]["min_frequency_thz"] < -2.0
    assert rec["counts"]["modes"] == 5 and "modes_unstable" in rec["seeds"]
    base, _ = compound_configurations(sto, plain)
    pos = [a.positions for a in more if a.info["kind"] == "modes"]
    np.testing.assert_array_equal(np.array(pos[:2]), np.array([a.positions for a in base
                                                               if a.info["kind"] == "modes"]))
    ref = sto.reference_atoms()
    fc = sto.force_constants
    for a in [a for a in more if a.info["kind"] == "modes"][2:]:  # the extra ones: same amplitude range, F = −Φu
        u = a.positions - ref.positions
        assert 0.01 - 1e-12 <= np.linalg.norm(u, axis=1).max() <= 0.05 + 1e-12
        np.testing.assert_allclose(a.get_forces(), harmonic_forces(fc, u), atol=1e-12)
    with pytest.raises(ValueError, match="n_modes_unstable"):
        DatasetSettings(n_modes_unstable=-1)


def test_cli_dataset_with_mode_weighted_configurations(tmp_path, toy_entry):
    from typer.testing import CliRunner

    from tdphonon.cli import app

    out = tmp_path / "ds"
    res = CliRunner().invoke(app, ["finetune", "dataset", str(toy_entry.source), "--out", str(out),
                                   "--n-random", "1", "--n-modes", "2", "--val-fraction", "0"])
    assert res.exit_code == 0, res.output
    man = json.loads((out / "manifest.json").read_text())
    assert man["settings"]["n_modes"] == 2
    kinds = [a.info["kind"] for a in load_dataset(out)["train"]]
    assert sorted(kinds) == ["modes", "modes", "random"]


def test_cli_dataset_with_base_anharmonic_labels(tmp_path, toy_entry):
    from typer.testing import CliRunner

    from tdphonon.cli import app

    args = ["finetune", "dataset", str(toy_entry.source), "--n-random", "0", "-T", "300", "--n-thermal", "2",
            "--val-fraction", "0", "--thermal-labels", "base_anharmonic"]
    res = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "no-base")])
    assert res.exit_code != 0 and "base model" in res.output
    out = tmp_path / "ds"
    # a harmonic base model (the entry's own Φ) has no anharmonic remainder: the labels are −Φu exactly
    res = CliRunner().invoke(app, [*args, "--out", str(out), "--base-model", f"harmonic:{toy_entry.source}"])
    assert res.exit_code == 0, res.output
    man = json.loads((out / "manifest.json").read_text())
    assert man["settings"]["thermal_labels"] == "base_anharmonic" and man["base_model_for_labels"]["sha256"]
    ref = toy_entry.reference_atoms()
    structs = load_dataset(out)["train"]
    assert [a.info["kind"] for a in structs] == ["thermal+base_anharmonic"] * 2
    for a in structs:
        u = a.positions - ref.positions
        np.testing.assert_allclose(a.get_forces(), harmonic_forces(toy_entry.force_constants, u[None])[0],
                                   atol=1e-6)  # extxyz precision


def test_dfset_units_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    u = rng.normal(scale=0.03, size=(3, 5, 3))
    f = rng.normal(scale=0.5, size=(3, 5, 3))
    e = np.array([-10.0, -9.99, -9.98])
    path = write_dfset(tmp_path / "DFSET", u, f, e)
    first = [float(x) for x in path.read_text().splitlines()[1].split()]
    np.testing.assert_allclose(first[:3], u[0, 0] / BOHR, atol=1e-11)  # Bohr on disk
    np.testing.assert_allclose(first[3:], f[0, 0] / RY_PER_BOHR, rtol=1e-11)  # Ry/Bohr on disk
    u2, f2, e2 = read_dfset(path, 5)
    np.testing.assert_allclose(u2, u, atol=1e-11)
    np.testing.assert_allclose(f2, f, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(e2, e)
    # a line of ALAMODE's SrTiO3 harmonic set: 0.0188972 Bohr = 0.01 Å, 7.557e-3 Ry/Bohr = 0.1943 eV/Å
    (tmp_path / "DFSET_one").write_text("0.0188972 0.0 0.0 -7.55749226E-03 0.0 0.0\n" + "0 0 0 0 0 0\n")
    u1, f1, e1 = read_dfset(tmp_path / "DFSET_one", 2)
    assert u1[0, 0, 0] == pytest.approx(0.0100000, abs=1e-7)
    assert f1[0, 0, 0] == pytest.approx(-0.194311, abs=1e-5)
    assert e1 is None


def test_dfset_malformed(tmp_path):
    good = write_dfset(tmp_path / "DFSET_good", np.zeros((2, 4, 3)), np.zeros((2, 4, 3)))
    lines = good.read_text().splitlines()
    cases = {
        "DFSET_truncated": ("\n".join(lines[:-1]), "not a multiple of NAT"),
        "DFSET_shortblock": ("\n".join(lines[:3] + lines[5:]), "truncated block"),
        "DFSET_columns": ("\n".join([*lines[:2], "0 0 0 0 0", *lines[3:]]), "expected 6 numbers"),
        "DFSET_text": ("\n".join([*lines[:2], "0 0 0 a b c", *lines[3:]]), "not numbers"),
    }
    for name, (text, why) in cases.items():
        (tmp_path / name).write_text(text + "\n")
        with pytest.raises(DataError, match=why) as err:
            read_dfset(tmp_path / name, 4, label="x")
        assert name in str(err.value)
    with pytest.raises(DataError, match="fewer than NDATA"):
        read_dfset(good, 4, ndata=3)


def test_alamode_input_and_fit_recover_phi(tmp_path, toy):
    ph, fc_true = toy
    folder = _save_alamode(ph, fc_true, tmp_path / "alm")
    inp = read_alamode_input(folder / "ALM.in")
    np.testing.assert_allclose(inp.cell, np.asarray(ph.supercell.cell), atol=1e-9)  # Bohr × scale → Å
    assert inp.natom == 16 and inp.symbols == list(ph.supercell.symbols)
    assert inp.norder == 1 and inp.dfset == "DFSET_harmonic"
    entry = read_alamode(folder, label="toy-alm")
    assert len(entry.phonon.primitive) == 2  # primitive cell detected in the ALAMODE supercell
    np.testing.assert_allclose(entry.force_constants, fc_true, atol=1e-8)
    assert entry.raw_displacement_sets[0].kind == "fd"
    # malformed inputs
    text = (folder / "ALM.in").read_text()
    (folder / "ALM.in").write_text(text.replace("NAT = 16", "NAT = 15"))
    with pytest.raises(DataError, match="NAT = 15"):
        read_alamode_input(folder / "ALM.in")
    (folder / "ALM.in").write_text(text.replace("&cell", "&cellx"))
    with pytest.raises(DataError, match="no &cell block"):
        read_alamode_input(folder / "ALM.in")


@requires_reference
def test_srtio3_alamode_reference():
    entry = read_alamode(ALAMODE_STO, label="alamode-SrTiO3")
    assert entry.n_atoms_supercell == 40 and entry.compound == "SrTiO3-221"
    assert entry.functional == "PBEsol"  # GGA = PS in vasp_inputs/INCAR.displace
    # lattice: 14.726 Bohr (2x2x2 cubic cell) in Å
    np.testing.assert_allclose(np.diag(entry.phonon.supercell.cell), 14.726 * BOHR, rtol=1e-10)
    fc = entry.force_constants
    onsite = np.abs(fc[np.arange(40), np.arange(40)]).max()
    assert np.abs(fc.sum(axis=1)).max() < 1e-10 * onsite  # acoustic sum rule
    np.testing.assert_allclose(fc, fc.transpose(1, 0, 3, 2), atol=1e-10)  # Φ_ij = Φ_jiᵀ
    chk = entry.checks
    assert max(chk["gamma_acoustic_thz"]) < 1e-3
    assert 15.0 < chk["max_frequency_thz"] < 35.0  # highest O mode ~25 THz (units right)
    assert -4.0 < chk["min_frequency_thz"] < 0.0  # the known antiferrodistortive instability of cubic SrTiO3
    # ALAMODE's own fit of the same harmonic set (STO222.xml, Ry/Bohr²) agrees with the symfc fit
    assert chk["xml_relative_difference"] < 1e-6
    kinds = {s.kind: s for s in entry.raw_displacement_sets}
    assert kinds["fd"].n_configurations == 4
    assert kinds["md+random"].n_configurations == 40 and kinds["md+random"].summary()["max_displacement"] > 0.3


# --------------------------------------------------------------------------------------------
# malformed phonopy sources, database folders
# --------------------------------------------------------------------------------------------
def test_malformed_phonopy_sources(tmp_path, toy, monkeypatch):
    ph, _ = toy
    good = _save_disp_force_sets(ph, tmp_path / "good")
    assert read_entry(good).n_atoms_supercell == 16
    lines = (good / "FORCE_SETS").read_text().splitlines()
    bad = {"wrong-natom": ["20", *lines[1:]], "truncated": lines[:-1]}
    expect = {"wrong-natom": "declares 20 atoms but the supercell has 16", "truncated": "only 15 of 16 force lines"}
    for name, content in bad.items():
        folder = tmp_path / name
        shutil.copytree(good, folder)
        (folder / "FORCE_SETS").write_text("\n".join(content) + "\n")
        with pytest.raises(DataError, match=expect[name]) as err:
            read_entry(folder)
        assert str(folder / "FORCE_SETS") in str(err.value) and err.value.label == name
    garbage = tmp_path / "garbage" / "phonopy_params.yaml"
    garbage.parent.mkdir()
    garbage.write_text("phonopy: [unclosed\n  ::: not yaml\n")
    with pytest.raises(DataError, match=r"phonopy_params\.yaml") as err:
        read_entry(garbage.parent)
    assert err.value.label == "garbage"
    # a yaml without forces must not pick up FORCE_SETS of the working directory (phonopy.load's fallback)
    lone = tmp_path / "lone"
    lone.mkdir()
    shutil.copy(good / "phonopy_disp.yaml", lone / "phonopy_disp.yaml")
    monkeypatch.chdir(good)
    with pytest.raises(DataError, match="no force constants"):
        read_entry(lone / "phonopy_disp.yaml")


def test_mdr_database_folder(tmp_path, toy):
    from phonopy.file_IO import write_FORCE_CONSTANTS

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        kcl, _ = _toy_phonon(("K", "Cl"), 6.29)
        lif, fc_lif = _toy_phonon(("Li", "F"), 4.03)
        mgo, _ = _toy_phonon(("Mg", "O"), 4.21)
    root = tmp_path / "mdr"
    _save_params(toy[0], root / "mp-22862" / "phonopy_params.yaml.xz", compress=True)
    _save_disp_force_sets(kcl, root / "mp-23193")
    _save_alamode(lif, fc_lif, root / "mp-1138")
    mgo_dir = root / "mp-1265"
    mgo_dir.mkdir()
    mgo.save(str(mgo_dir / "phonopy_disp.yaml"), settings={"force_sets": False, "force_constants": False})
    write_FORCE_CONSTANTS(full_force_constants(mgo), str(mgo_dir / "FORCE_CONSTANTS"))
    (root / "mp-bad").mkdir()
    (root / "mp-bad" / "phonopy_params.yaml").write_text("::: garbage [\n")
    (root / "mp-empty").mkdir()
    shutil.copytree(root / "mp-23193", root / "mp-badfs")
    (root / "mp-badfs" / "FORCE_SETS").write_text("\n".join(
        (root / "mp-23193" / "FORCE_SETS").read_text().splitlines()[:-3]) + "\n")
    rep = read_database(root)
    labels = {e.label: e for e in rep.entries}
    assert set(labels) == {"mp-22862", "mp-23193", "mp-1138", "mp-1265"}
    assert labels["mp-22862"].compound == "NaCl-225" and labels["mp-1138"].compound == "LiF-225"
    assert labels["mp-1265"].notes == ["Φ read from FORCE_CONSTANTS"]
    for e in rep.entries:
        assert e.n_atoms_supercell == 16 and max(e.checks["gamma_acoustic_thz"]) < 1e-3
    skipped = {s.label: s.reason for s in rep.skipped}
    assert set(skipped) == {"mp-bad", "mp-empty", "mp-badfs"}
    assert "phonopy_params.yaml" in skipped["mp-bad"]
    assert "no recognised phonon data" in skipped["mp-empty"]
    assert "FORCE_SETS" in skipped["mp-badfs"] and "truncated" in skipped["mp-badfs"]


@requires_reference
def test_reference_tree_listing_and_failures():
    found = {label: (path, loader) for label, path, loader in iter_reference_entries(REFERENCE)}
    for label in ("alamode-SrTiO3", "alamode-BaTiO3", "alamode-Si", "phonopy_params_NaCl-rd", "MgO",
                  "NaCl-alm_phono3py_params_NaCl222_PBEsol_rd200", "spacegroup-P4mm", "LiF-nosym"):
        assert label in found, label
    with pytest.raises(DataError, match="no ALAMODE structure"):
        found["alamode-Si"][1]()
    with pytest.raises(DataError, match="supercell matrix"):
        found["LiF-nosym"][1]()
    bto = found["alamode-BaTiO3"][1]()  # structure + Φ from the ALAMODE xml, 80 AIMD configurations with energies
    assert bto.raw_displacement_sets[0].kind == "md+random"
    assert bto.raw_displacement_sets[0].energies.shape == (80,)
    assert abs(bto.checks["asr_drift"]) < 1e-10


# --------------------------------------------------------------------------------------------
# data set
# --------------------------------------------------------------------------------------------
def test_split_by_compound():
    comps = [f"C{i}-225" for i in range(40)]
    s1 = split_by_compound(comps, 0.05, held_out=["C3-225"], seed=1)
    s2 = split_by_compound(list(reversed(comps)), 0.05, held_out=["C3-225"], seed=1)
    assert s1 == s2  # independent of the order
    assert s1["C3-225"] == "test"
    assert sum(v == "val" for v in s1.values()) == 2  # round(0.05 × 39)
    assert split_by_compound(comps, 0.05, seed=2) != split_by_compound(comps, 0.05, seed=1)
    two = split_by_compound(["A", "B"], 0.05)
    assert sorted(two.values()) == ["train", "val"]
    assert split_by_compound(["A"], 0.05) == {"A": "train"}


@pytest.fixture(scope="module")
def toy_entries():
    from phonopy.structure.atoms import PhonopyAtoms  # noqa: F401  (phonopy import before warnings filter)

    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for label, sym, a in (("nacl-a", ("Na", "Cl"), 5.64), ("nacl-b", ("Na", "Cl"), 5.64),
                              ("kcl", ("K", "Cl"), 6.29), ("lif", ("Li", "F"), 4.03), ("mgo", ("Mg", "O"), 4.21),
                              ("naf", ("Na", "F"), 4.63), ("kbr", ("K", "Br"), 6.60)):
            ph, _ = _toy_phonon(sym, a)
            ph.force_constants = full_force_constants(ph)
            out.append(HarmonicEntry(label, ph, f"synthetic:{label}", notes=["spring model"]))
    return out


def test_dataset_split_manifest_and_files(tmp_path, toy_entries):
    settings = DatasetSettings(val_fraction=0.2, held_out=("lif",), seed=5)
    ds = build_dataset(toy_entries, settings)
    folder = tmp_path / "ft"
    mpath = write_dataset(ds, folder)
    assert {p.name for p in folder.iterdir()} == {"train.extxyz", "val.extxyz", "test.extxyz", "manifest.json"}
    manifest = json.loads(mpath.read_text())
    data = load_dataset(folder)
    # no compound in two splits; both NaCl entries (one compound) in the same split
    where: dict[str, set[str]] = {}
    for split, structs in data.items():
        for a in structs:
            assert a.info["split"] == split
            where.setdefault(a.info["compound"], set()).add(split)
    assert all(len(v) == 1 for v in where.values()), where
    assert where["LiF-225"] == {"test"} and manifest["splits"]["test"]["compounds"] == ["LiF-225"]
    assert manifest["compounds"]["NaCl-225"]["labels"] == ["nacl-a", "nacl-b"]
    assert len(manifest["splits"]["val"]["compounds"]) == 1  # round(0.2 × 5 compounds)
    # manifest counts match the files
    for split, structs in data.items():
        assert manifest["files"][split]["n_structures"] == len(structs) == manifest["splits"][split]["n_structures"]
        for comp in manifest["splits"][split]["compounds"]:
            n = sum(a.info["compound"] == comp for a in structs)
            assert n == manifest["compounds"][comp]["n_structures"] == 10 * len(manifest["compounds"][comp]["labels"])
    assert sum(len(v) for v in data.values()) == 10 * len(toy_entries)
    assert manifest["settings"]["n_random"] == 10 and manifest["seed"] == 5
    assert "numpy" in manifest["versions"] and "phonopy" in manifest["versions"]
    # forces in the files are exactly −Φu of the positions written; no energies (E0 unknown)
    by_label = {e.label: e for e in toy_entries}
    for structs in data.values():
        for a in structs:
            e = by_label[a.info["label"]]
            u = a.positions - e.reference_atoms().positions
            norms = np.linalg.norm(u, axis=1)
            assert norms.min() >= 0.01 - 1e-6 and norms.max() <= 0.05 + 1e-6
            np.testing.assert_allclose(a.get_forces(), harmonic_forces(e.force_constants, u), atol=1e-6)
            assert a.info["energy_available"] is False or a.info["energy_available"] == 0
    # tampering is detected
    with open(folder / "val.extxyz", "a") as fh:
        fh.write("\n")
    with pytest.raises(DataError, match="sha256"):
        load_dataset(folder)
    with pytest.raises(FileExistsError):
        write_dataset(ds, folder)


def test_seeds_are_per_compound(toy_entries):
    a, _ = compound_configurations(toy_entries[2], DatasetSettings(seed=1))
    b = build_dataset(toy_entries[::-1], DatasetSettings(seed=1))
    other = [x for s in b.structures.values() for x in s if x.info["label"] == toy_entries[2].label]
    np.testing.assert_array_equal(np.array([x.positions for x in a]), np.array([x.positions for x in other]))


def test_energies_thermal_and_raw(toy_entries):
    entry = toy_entries[0]
    fc = entry.force_constants
    ref = entry.reference_atoms()
    # raw DFT-like energies E0 + ½uᵀΦu: E0 is recovered, then written for the harmonic configurations
    u_raw = random_displacements(16, 4, seed=11)
    raw = ForceSet(u_raw, harmonic_forces(fc, u_raw), supercell_to_ase(entry.phonon.supercell),
                   harmonic_energies(fc, u_raw, -55.0), kind="random", source="synthetic")
    e2 = HarmonicEntry("nacl-raw", entry.phonon, "synthetic", raw_displacement_sets=[raw])
    e0, rms, n = estimate_energy0(e2)
    assert e0 == pytest.approx(-55.0, abs=1e-10) and rms < 1e-10 and n == 4
    s = DatasetSettings(n_random=3, temperatures=(300.0,), n_thermal=2, include_raw=True, estimate_energy0=True)
    structs, rec = compound_configurations(e2, s)
    assert rec["counts"] == {"random": 3, "thermal_300K": 2, "raw:random": 4}
    assert rec["energy0"] == pytest.approx(-55.0)
    for a in structs:
        u = a.positions - ref.positions
        assert a.info["energy_available"]
        assert a.get_potential_energy() == pytest.approx(float(harmonic_energies(fc, u, -55.0)), abs=1e-9)
        np.testing.assert_allclose(a.get_forces(), harmonic_forces(fc, u), atol=1e-10)
    thermal = [a for a in structs if a.info["kind"] == "thermal"]
    assert all(a.info["temperature"] == 300.0 for a in thermal)
    assert rec["thermal"]["300K"]["rms_displacement"] > 0.05  # light ions at 300 K: well above 0.01 Å
    # without E0: forces only
    structs, rec = compound_configurations(entry, DatasetSettings(n_random=2))
    assert rec["energy0"] is None and not any(a.info["energy_available"] for a in structs)
    assert all("energy" not in a.calc.results for a in structs)


def test_base_anharmonic_thermal_labels(toy_entries):
    """Thermal labels −Φ_DFT·u + the base model's anharmonic remainder: exact on a quartic base model."""
    from tdphonon.analytic import ForceConstantPotential
    from tdphonon.finetune.dataset import anharmonic_remainder

    entry = toy_entries[0]
    fc, ref = entry.force_constants, entry.reference_atoms()
    lam, delta = 3.0, 0.004
    # the base model: another curvature (0.7 Φ) plus an on-site quartic (λ/4)Σu⁴, whose force is −λu³
    base = ForceConstantPotential(ref, 0.7 * fc, quartic=lam, name="toy-base")
    s = DatasetSettings(n_random=1, temperatures=(600.0,), n_thermal=3, thermal_labels="base_anharmonic",
                        remainder_delta=delta)
    structs, rec = compound_configurations(entry, s, base)
    thermal = [a for a in structs if a.info["kind"] == "thermal+base_anharmonic"]
    assert len(thermal) == 3 and rec["counts"]["thermal_600K"] == 3
    for a in thermal:
        u = a.positions - ref.positions
        eps = delta / np.linalg.norm(u, axis=1).max()
        # the central difference along u keeps −λε²u³ of the quartic in the "linear" part: R = −λu³(1 − ε²)
        expected = harmonic_forces(fc, u[None])[0] - lam * u ** 3 * (1 - eps ** 2)
        np.testing.assert_allclose(a.get_forces(), expected, atol=1e-9)
        assert not a.info["energy_available"] and "energy" not in a.calc.results
        assert np.abs(lam * u ** 3).max() > 1e-3  # the remainder is not negligible here: the check has teeth
    assert rec["anharmonic_remainder"]["600K"]["ratio_to_harmonic"] > 0
    # a harmonic base model has no remainder (its Φ never leaks into the labels)
    harm = ForceConstantPotential(ref, 0.7 * fc, name="toy-harmonic")
    u = np.stack([a.positions - ref.positions for a in thermal])
    np.testing.assert_allclose(anharmonic_remainder(harm, ref, u, delta), 0.0, atol=1e-10)
    with pytest.raises(ValueError, match="base model"):
        compound_configurations(entry, s)
    with pytest.raises(ValueError, match="thermal_labels"):
        DatasetSettings(thermal_labels="dft")
    ds = build_dataset(toy_entries[:2], s, base)
    assert ds.manifest["base_model_for_labels"]["sha256"] == base.identity.sha256


def test_base_anharmonic_labels_drop_only_the_configurations_where_the_base_extrapolates(toy_entries):
    """An over-limit base-model force drops that thermal configuration (reported), not the whole set."""
    from tdphonon.analytic import ForceConstantPotential

    entry = toy_entries[0]
    fc, ref = entry.force_constants, entry.reference_atoms()
    s = DatasetSettings(n_random=2, temperatures=(600.0,), n_thermal=4, thermal_labels="base_anharmonic")
    plain, _ = compound_configurations(entry, s, ForceConstantPotential(ref, fc, quartic=1.0, name="toy-base"))
    ux = sorted(abs(float(a.positions[0, 0] - ref.positions[0, 0])) for a in plain if a.info.get("temperature"))
    assert ux[2] - ux[1] > 1e-3 and ux[1] > 0.01  # the ±εu probes (≤ 0.005 Å) stay below the first cut

    class Extrapolating(ForceConstantPotential):
        """100 eV/Å on atom 0 wherever it is displaced along x by more than ``cut`` (a hole in the model)."""

        cut = 0.5 * (ux[1] + ux[2])

        def _compute(self, atoms_list):
            energies, forces = super()._compute(atoms_list)
            for at, f in zip(atoms_list, forces, strict=True):
                if abs(at.positions[0, 0] - ref.positions[0, 0]) > self.cut:
                    f[0, 0] += 100.0
            return energies, forces

    hole = Extrapolating(ref, fc, quartic=1.0, name="toy-hole")
    hole.max_force = 50.0  # the MLIPs' limit (analytic potentials accept any force)
    structs, rec = compound_configurations(entry, s, hole)
    thermal = [a for a in structs if a.info.get("temperature")]
    assert rec["counts"]["thermal_600K"] == len(thermal) == 2 and rec["thermal_dropped"]["600K"] == 2
    assert rec["counts"]["random"] == 2  # the harmonic data of the set are kept
    assert any("2 of 4 configurations dropped" in w and "exceeds the limit" in w for w in rec["warnings"])
    kept = sorted(abs(float(a.positions[0, 0] - ref.positions[0, 0])) for a in thermal)
    np.testing.assert_allclose(kept, ux[:2], atol=1e-9)
    # where every configuration extrapolates, that temperature is dropped; the set still is not
    hole.cut = 0.5 * ux[0]
    structs, rec = compound_configurations(entry, s, hole)
    assert "thermal_600K" not in rec["counts"] and rec["counts"]["random"] == 2
    assert rec["thermal_dropped"]["600K"] == 4 and not any(a.info.get("temperature") for a in structs)


# --------------------------------------------------------------------------------------------
# replay: base-model labels for structures without DFT data
# --------------------------------------------------------------------------------------------
def _lj_potential():
    from ase.calculators.lj import LennardJones

    from tdphonon.potentials import ASEPotential, ModelIdentity

    calc = LennardJones(sigma=2.5, epsilon=0.01, rc=6.0)
    return calc, ASEPotential(calc, ModelIdentity("lj-toy", "test", "1" * 64, "ase", "ase", "0"))


def test_replay_structures_are_labelled_by_the_base_model(tmp_path, toy_entries):
    """Replay: elemental crystals + a file, base-model forces, training split only; DFT data unchanged;
    formulas of DFT compounds (held-out ones above all) and non-crystals are skipped with the reason."""
    import ase.io
    from ase import Atoms
    from ase.build import bulk

    calc, pot = _lj_potential()
    extra = tmp_path / "extra.extxyz"
    ase.io.write(extra, [bulk("Cu"), bulk("NaCl", "rocksalt", a=5.64), bulk("KCl", "rocksalt", a=6.29),
                         Atoms("Cu2", positions=[[0, 0, 0], [0, 0, 2.5]])])
    plain = DatasetSettings(n_random=2, held_out=("kcl",), val_fraction=0.2)
    s = DatasetSettings(n_random=2, held_out=("kcl",), val_fraction=0.2, replay=("elements", str(extra)), n_replay=3)
    ds0, ds = build_dataset(toy_entries, plain), build_dataset(toy_entries, s, pot)
    # the DFT data and their split do not change
    assert ds.manifest["compounds"] == ds0.manifest["compounds"]
    dft = [a for a in ds.structures["train"] if a.info["kind"] != "replay:base"]
    assert [a.info["label"] for a in dft] == [a.info["label"] for a in ds0.structures["train"]]
    for a, b in zip(dft, ds0.structures["train"], strict=True):
        np.testing.assert_array_equal(a.positions, b.positions)
    for split in ("val", "test"):
        assert not any(a.info["kind"].startswith("replay") for a in ds.structures[split])
        assert len(ds.structures[split]) == len(ds0.structures[split])
    # the elements of the training and validation compounds (K only through KBr: KCl is held out)
    rep = ds.manifest["replay"]
    assert rep["elements"] == ["Br", "Cl", "F", "K", "Li", "Mg", "Na", "O"]
    used = {r["label"]: r for r in rep["structures_used"]}
    assert set(used) == {"replay:K-bcc", "replay:Li-bcc", "replay:Mg-hcp", "replay:Na-bcc", "replay:extra.extxyz#0"}
    reasons = {k["label"]: k["reason"] for k in rep["skipped"]}
    assert "held-out" in reasons["replay:extra.extxyz#2"] and "DFT data" in reasons["replay:extra.extxyz#1"]
    assert "periodic crystal" in reasons["replay:extra.extxyz#3"] and "diatom" in reasons["replay:O-diatom"]
    replay = [a for a in ds.structures["train"] if a.info["kind"] == "replay:base"]
    assert len(replay) == rep["n_structures"] == 5 * 3
    assert ds.manifest["splits"]["train"]["n_structures"] == len(ds0.structures["train"]) + 15
    assert ds.manifest["base_model_for_labels"]["sha256"] == "1" * 64
    cu = [a for a in replay if a.info["label"] == "replay:extra.extxyz#0"]
    ref = bulk("Cu").repeat((4, 4, 4))  # the smallest n³ with ≥ 32 atoms
    assert used["replay:extra.extxyz#0"]["n_atoms"] == 64 and len(cu) == 3
    for a in replay:
        assert len(a) >= 32 and a.info["split"] == "train" and not a.info["energy_available"]
        b = a.copy()
        b.calc = calc
        np.testing.assert_allclose(a.get_forces(), b.get_forces(), atol=1e-12)  # the base model's own forces
        assert a.info["base_energy"] == pytest.approx(b.get_potential_energy())
    for a in cu:
        amp = np.linalg.norm(a.positions - ref.positions, axis=1)
        assert amp.min() >= 0.01 - 1e-12 and amp.max() <= 0.05 + 1e-12
    assert np.abs(cu[0].get_forces()).max() > 1e-4  # labels that a wrong geometry would change
    # seeded: the same settings give the same data; the structures round-trip through extxyz
    again = build_dataset(toy_entries, s, pot)
    np.testing.assert_array_equal(again.structures["train"][-1].positions, ds.structures["train"][-1].positions)
    write_dataset(ds, tmp_path / "ds")
    back = [a for a in load_dataset(tmp_path / "ds")["train"] if a.info["kind"] == "replay:base"]
    assert len(back) == 15
    np.testing.assert_allclose(back[0].get_forces(), replay[0].get_forces(), atol=1e-6)
    # without the base model there are no labels; a missing file is named
    with pytest.raises(ValueError, match="base model"):
        build_dataset(toy_entries, s)
    with pytest.raises(DataError, match="missing"):
        build_dataset(toy_entries, DatasetSettings(replay=(str(tmp_path / "nope.cif"),)), pot)
    with pytest.raises(ValueError, match="n_replay"):
        DatasetSettings(n_replay=-1)
    assert DatasetSettings.from_dict(s.to_dict()) == s


def test_cli_dataset_with_replay(tmp_path, toy_entry, random_m3gnet_dir):
    from typer.testing import CliRunner

    from tdphonon.cli import app

    args = ["finetune", "dataset", str(toy_entry.source), "--n-random", "1", "--val-fraction", "0",
            "--replay", "elements", "--n-replay", "2"]
    res = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "no-base")])
    assert res.exit_code != 0 and "base model" in res.output
    out = tmp_path / "ds"
    res = CliRunner().invoke(app, [*args, "--out", str(out), "--base-model", str(random_m3gnet_dir)])
    assert res.exit_code == 0, res.output
    assert "replay:Cl-orthorhombic" in res.output  # skipped, and said so
    man = json.loads((out / "manifest.json").read_text())
    assert man["settings"]["replay"] == ["elements"] and man["base_model_for_labels"]["kind"] == "matgl"
    assert [r["label"] for r in man["replay"]["structures_used"]] == ["replay:Na-bcc"]
    kinds = sorted(a.info["kind"] for a in load_dataset(out)["train"])
    assert kinds == ["random", "replay:base", "replay:base"]
