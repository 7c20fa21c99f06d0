"""The command line: ``tdphonon harmonic`` and ``tdphonon run`` write loadable outputs."""

from __future__ import annotations

import json

import numpy as np
import phonopy
import pytest
from typer.testing import CliRunner

from conftest import REFERENCE, requires_reference
from tdphonon.cli import app

runner = CliRunner()


def _nacl_poscar(tmp_path):
    """(phonopy params of the NaCl DFT set, its unit cell written as POSCAR in tmp_path)."""
    from tdphonon.structures import from_phonopy_atoms

    params = REFERENCE / "phonopy" / "test" / "phonopy_params_NaCl-fd.yaml.xz"
    ph = phonopy.load(str(params), log_level=0, is_nac=False)
    poscar = tmp_path / "POSCAR"
    from_phonopy_atoms(ph.unitcell).to(filename=str(poscar), fmt="poscar")
    return params, poscar


@requires_reference
def test_run_on_dft_harmonic_potential_gives_no_shift(tmp_path):
    """End to end through the CLI with an exactly harmonic potential: Φ(T) = Φ⁰, files readable."""
    params, poscar = _nacl_poscar(tmp_path)
    out = tmp_path / "out"
    res = runner.invoke(app, ["run", str(poscar), "-T", "300", "-T", "600", "--model", f"harmonic:{params}",
                              "--no-relax", "--supercell", "2 2 2",
                              "--estimator", "hessian", "--n-configurations", "4", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "depends on that policy" not in res.output  # a stable crystal: no mode set by the policy
    assert "--check-displacement" not in res.output  # and no hint to check imaginary modes
    summary = json.loads((out / "summary.json").read_text())
    assert [t["temperature"] for t in summary["temperatures"]] == [300.0, 600.0]
    assert not any(t["mode_report"]["policy_dependent"] for t in summary["temperatures"])
    assert all(t["converged"] is None and t["imaginary_fixed_point"] is None for t in summary["temperatures"])
    for t in summary["temperatures"]:
        assert t["r_onsite_max"] < 1e-8 and t["r_full"] < 1e-8
        assert abs(t["frequency_shift"]) < 1e-8
    assert summary["model"]["kind"] == "analytic" and len(summary["model"]["sha256"]) == 64
    assert summary["tdph_settings"]["estimator"] == "hessian" and summary["tdph_settings"]["digest"]
    p0 = phonopy.load(str(out / "phonopy_0K.yaml"), log_level=0)
    p3 = phonopy.load(str(out / "phonopy_300K.yaml"), log_level=0)
    np.testing.assert_allclose(p3.force_constants, p0.force_constants, atol=1e-8)
    assert (out / "dispersion_dos.png").stat().st_size > 10_000
    # the same command again reuses the stored result (same structure, model and settings)
    res = runner.invoke(app, ["run", str(poscar), "-T", "300", "-T", "600", "--model", f"harmonic:{params}",
                              "--no-relax", "--supercell", "2 2 2",
                              "--estimator", "hessian", "--n-configurations", "4", "--out", str(out)])
    assert res.exit_code == 0 and "reusing" in res.output
    # with the step check: other settings (not the stored result), the check in the document and the output
    res = runner.invoke(app, ["run", str(poscar), "-T", "300", "--model", f"harmonic:{params}", "--no-relax",
                              "--supercell", "2 2 2", "--estimator", "hessian", "--n-configurations", "4",
                              "--check-displacement", "0.03", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "reusing" not in res.output and "step-independent" in res.output
    summary = json.loads((out / "summary.json").read_text())
    check = summary["harmonic"]["step_check"]
    assert check["check_displacement"] == 0.03 and check["max_change_thz"] < 1e-6 and not check["step_sensitive"]
    assert summary["harmonic_settings"]["check_displacement"] == 0.03
    from tdphonon.cli import _maker

    m = _maker("harmonic:x", [300.0], "force_fit", False, 16, "abs", 0, False, None, "c", check_displacement=0.03)
    assert m.harmonic.check_displacement == 0.03
    assert "check_displacement" not in _maker("harmonic:x", [300.0], "force_fit", False, 16, "abs", 0, False,
                                              None, "c").harmonic.to_dict()


@requires_reference
def test_run_outliers_stop_with_a_hint_or_are_dropped_and_reported(tmp_path, monkeypatch):
    """Configurations above the model's force limit: ``run`` stops naming the material, the configuration
    and what to try; with ``--drop-outliers`` it drops them (and their ± partners), says so, and records
    them in the result. A YAML ``--tdph-settings`` file (ruamel number types) is stored as plain JSON."""
    import shutil

    import tdphonon.analytic as analytic
    from tdphonon.campaign import local_store, query, rows

    params0, poscar = _nacl_poscar(tmp_path)
    params = tmp_path / "capped.yaml.xz"  # a model spec of its own: not the potential cached by other tests
    shutil.copy(params0, params)
    init = analytic.ForceConstantPotential.__init__

    def capped(self, *args, **kwargs):
        init(self, *args, **kwargs)
        self.max_force = 0.8  # eV/Å: of the 8 configurations at 300 K (max|F| 0.73-0.82) the pair #0/#1 exceeds it

    monkeypatch.setattr(analytic.ForceConstantPotential, "__init__", capped)
    args = ["run", str(poscar), "-T", "300", "--model", f"harmonic:{params}", "--no-relax", "--supercell", "2 2 2",
            "--n-configurations", "8"]
    res = runner.invoke(app, [*args, "--out", str(tmp_path / "stop")])
    text = " ".join(res.output.split())
    assert res.exit_code == 2, res.output
    assert "UnphysicalForcesError" in text and "exceeds the limit of 0.8 eV/Å" in text and "it0 #0" in text
    assert "hint" in text and "--drop-outliers" in text and "floor_thz" in text and "--supercell" in text
    settings = tmp_path / "ts.yaml"
    settings.write_text("policy: {kind: abs, threshold_thz: 0.25}\ntol_thz: 0.07\n")
    out = tmp_path / "drop"
    res = runner.invoke(app, [*args, "--drop-outliers", "--tdph-settings", str(settings), "--out", str(out)])
    text = " ".join(res.output.split())
    assert res.exit_code == 0, res.output
    assert "2 configuration(s) dropped as outliers at 300 K" in text and "exceeds the limit" in text
    summary = json.loads((out / "summary.json").read_text())
    ts = summary["tdph_settings"]
    assert ts["drop_outliers"] is True and ts["policy"]["threshold_thz"] == 0.25 and ts["tol_thz"] == 0.07
    assert [o["configuration"] for o in summary["temperatures"][0]["outliers"]] == [0, 1]
    assert summary["temperatures"][0]["force_calls"] == 8  # one batch, each configuration checked on its own
    assert [r["n_dropped_configurations"] for r in rows(query(local_store(out / "store")))] == [2]
    assert query(local_store(out / "store"), exclude_cut_samples=True) == []
    # a campaign lists the failure and names the settings-file field instead of the option
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    shutil.copy(poscar, inputs / "NaCl.vasp")
    res = runner.invoke(app, ["campaign", str(inputs), "--local", str(tmp_path / "camp"),
                              "--model", f"harmonic:{params}", "--no-relax", "--supercell", "2 2 2",
                              "--n-configurations", "8"])
    text = " ".join(res.output.split())
    assert res.exit_code == 0 and "1 failed" in text and "exceeds the limit" in text, res.output
    assert "'drop_outliers: true' in a --tdph-settings file" in text and "--drop-outliers" not in text


@requires_reference
def test_run_displacement_cap_hint_and_clipping_reported(tmp_path):
    """A displacement above the per-atom cap stops ``run`` with the options (cap_mode clip among them);
    with ``cap_mode: clip`` the shortened displacements are counted in the result, the table and the output."""
    from tdphonon.campaign import local_store, query, rows

    params, poscar = _nacl_poscar(tmp_path)
    args = ["run", str(poscar), "-T", "300", "--model", f"harmonic:{params}", "--no-relax", "--supercell", "2 2 2",
            "--n-configurations", "4"]
    strict = tmp_path / "cap.yaml"
    strict.write_text("max_displacement: 0.15\n")
    res = runner.invoke(app, [*args, "--tdph-settings", str(strict), "--out", str(tmp_path / "stop")])
    text = " ".join(res.output.split())
    assert res.exit_code == 2 and "SamplingError" in text and "> cap 0.150 Å" in text, res.output
    assert "hint" in text and "'cap_mode: clip'" in text and "--drop-outliers" not in text
    clip = tmp_path / "clip.yaml"
    clip.write_text("max_displacement: 0.15\ncap_mode: clip\n")
    out = tmp_path / "clip"
    res = runner.invoke(app, [*args, "--tdph-settings", str(clip), "--out", str(out)])
    text = " ".join(res.output.split())
    assert res.exit_code == 0, res.output
    n = json.loads((out / "summary.json").read_text())["temperatures"][0]["n_clipped_atoms"]
    assert n > 0 and f"{n} atom displacement(s) shortened to the cap at 300 K" in text
    assert [r["n_clipped_atoms"] for r in rows(query(local_store(out / "store")))] == [n]
    res = runner.invoke(app, ["query", "--local", str(out / "store"), "--exclude-cut-samples", "--format", "json"])
    assert res.exit_code == 0 and json.loads(res.stdout) == [], res.output


@requires_reference
def test_run_quartic_fit_estimator_from_the_cli(tmp_path):
    """--estimator quartic_fit end to end (harmonic potential: the fitted Φ₄ vanishes, Φ(T) = Φ⁰)."""
    params, poscar = _nacl_poscar(tmp_path)
    out = tmp_path / "out"
    res = runner.invoke(app, ["run", str(poscar), "-T", "300", "--model", f"harmonic:{params}", "--no-relax",
                              "--supercell", "2 2 2", "--estimator", "quartic_fit", "--self-consistent",
                              "--noise-tol", "3", "--n-configurations", "4", "--out", str(out)])
    assert res.exit_code == 0, res.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["tdph_settings"]["estimator"] == "quartic_fit" and summary["tdph_settings"]["noise_tol"] == 3.0
    t = summary["temperatures"][0]
    assert t["r_full"] < 1e-8 and abs(t["frequency_shift"]) < 1e-8
    assert t["converged"] is True and t["imaginary_fixed_point"] is False  # a real (stable) fixed point
    p0 = phonopy.load(str(out / "phonopy_0K.yaml"), log_level=0)
    p3 = phonopy.load(str(out / "phonopy_300K.yaml"), log_level=0)
    np.testing.assert_allclose(p3.force_constants, p0.force_constants, atol=1e-8)


@pytest.mark.mlip
def test_harmonic_cli_sevennet(tmp_path, srtio3_cif):
    out = tmp_path / "h"
    res = runner.invoke(app, ["harmonic", str(srtio3_cif), "--model", "sevennet-0", "--supercell", "2 2 2",
                              "--out", str(out)])
    assert res.exit_code == 0, res.output
    s = json.loads((out / "summary.json").read_text())
    assert s["phonons"]["imaginary"]["has_imaginary"]  # cubic SrTiO3 soft modes
    assert "--check-displacement" in res.output  # the hint to check them against a second step
    assert (out / "dispersion_dos.png").exists()
    phonopy.load(str(out / "phonopy.yaml"), log_level=0)


def test_cli_reports_bad_input_clearly(tmp_path):
    bad = tmp_path / "overlap.cif"
    from pymatgen.core import Lattice, Structure

    Structure(Lattice.cubic(4.0), ["Na", "Cl"], [[0, 0, 0], [0.01, 0, 0]]).to(filename=str(bad))
    res = runner.invoke(app, ["harmonic", str(bad), "--model", "chgnet", "--out", str(tmp_path / "o")])
    assert res.exit_code == 2
    assert "overlap" in res.output and "overlapping atoms" in res.output
    # a step check with the result's own step is refused before any model is loaded
    res = runner.invoke(app, ["harmonic", str(bad), "--model", "no-such-model", "--check-displacement", "0.01",
                              "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "must differ from displacement" in res.output


def test_run_target_error_needs_the_noise_stop_and_the_pool(tmp_path, srtio3_cif):
    """--target-error without --noise-tol/--reuse-samples stops before any model is loaded, saying why."""
    res = runner.invoke(app, ["run", str(srtio3_cif), "--model", "no-such-model", "--self-consistent",
                              "--noise-tol", "3", "--target-error", "0.1", "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "target_error_thz" in res.output and "reuse_samples" in res.output


def test_campaign_tdph_settings_file(tmp_path):
    """``--tdph-settings`` (JSON or YAML) sets any TDPHSettings field of a campaign; bad files fail clearly
    before any material is read."""
    from tdphonon.cli import _maker
    from tdphonon.renormalize import TDPHSettings

    good = tmp_path / "ts.yaml"
    good.write_text("self_consistent: true\nreuse_samples: true\nnoise_tol: 3\npolicy: {kind: floor, floor_thz: 1.0}\n")
    m = _maker("harmonic:x", [300.0], "force_fit", False, 16, "abs", 0, False, None, "c", tdph_settings_file=good)
    ts = TDPHSettings.from_dict(m.tdph_settings)
    assert ts.self_consistent and ts.reuse_samples and ts.noise_tol == 3.0 and ts.policy.kind == "floor"
    assert ts.n_configurations == 16  # the command-line options stay where the file is silent
    js = tmp_path / "ts.json"
    js.write_text(json.dumps({"tol_thz": 0.1}))
    assert _maker("harmonic:x", [300.0], "force_fit", False, 16, "abs", 0, False, None, "c",
                  tdph_settings_file=js).tdph_settings["tol_thz"] == 0.1
    inp = tmp_path / "in"
    inp.mkdir()
    for text, message in (('{"noise_tolerance": 3}', "unknown TDPHSettings field(s) ['noise_tolerance']"),
                          ('{"noise_tol": -1}', "noise_tol must be ≥ 0"),
                          ("[1, 2]", "expected a mapping"), ("{not json", "cannot read it")):
        bad = tmp_path / "bad.json"
        bad.write_text(text)
        res = runner.invoke(app, ["campaign", str(inp), "--local", str(tmp_path / "store"), "-m", "sevennet-0",
                                  "--tdph-settings", str(bad)])
        assert res.exit_code != 0 and message in " ".join(res.output.split()), res.output


def test_status_failed_lists_reasons_and_the_options(monkeypatch):
    """``status --failed`` adds the options once when a FIZZLED firework failed in sampling, and not otherwise
    (launchpad calls replaced: the launchpad side is tested in test_campaign.py)."""
    from tdphonon import campaign as cmp

    fails = [{"fw_id": 7, "name": "SrTiO3 force constants", "reason": "UnphysicalForcesError: [SrTiO3] force of "
              "105.1 eV/Å on atom 45 exceeds the limit of 50.0 eV/Å (configuration 'SrTiO3 T=300K it0 #22')"},
             {"fw_id": 9, "name": "Cr force constants", "reason": "SamplingError: [Cr] configuration 3 at T=300 K "
              "brings two atoms to 1.000 Å < minimum distance 1.200 Å (reference shortest distance 2.4 Å)"}]
    monkeypatch.setattr(cmp, "load_launchpad", lambda path=None: object())
    monkeypatch.setattr(cmp, "status", lambda lp, campaign=None: {"c": {"n_materials": 2, "materials": {},
                                                                       "fireworks": {"FIZZLED": 2}}})
    monkeypatch.setattr(cmp, "failures", lambda lp, campaign=None: fails)
    res = runner.invoke(app, ["status", "-c", "c", "--failed"])
    text = " ".join(res.output.split())
    assert res.exit_code == 0, res.output
    assert "fw 7" in text and "fw 9" in text and text.count("hint") == 1
    assert "'drop_outliers: true' in a --tdph-settings file" in text and "'cap_mode: clip'" in text
    fails[:] = [{"fw_id": 3, "name": "Si harmonic phonons", "reason": "RuntimeError: CUDA unavailable"}]
    res = runner.invoke(app, ["status", "-c", "c", "--failed"])
    assert res.exit_code == 0 and "CUDA unavailable" in res.output and "hint" not in res.output
