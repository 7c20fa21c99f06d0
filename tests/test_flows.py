"""Jobs, the TDPhononMaker flow and the local (file-backed, no server) campaign."""

from __future__ import annotations

import json

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure

pytestmark = [pytest.mark.mlip]

HS = {"relax": False, "standardize": False, "supercell_matrix": [2, 2, 2], "mesh": [6, 6, 6], "band_npoints": 11}
TS = {"n_configurations": 4, "estimator": "force_fit", "cap_mode": "clip", "seed": 7}


def _si() -> Structure:
    return Structure.from_spacegroup("Fd-3m", Lattice.cubic(5.45), ["Si"], [[0, 0, 0]]).get_primitive_structure()


def _nacl(a: float = 5.65) -> Structure:
    s = Structure.from_spacegroup("Fm-3m", Lattice.cubic(a), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    return s.get_primitive_structure()


def _maker(**kw):
    from tdphonon.flows import TDPhononMaker

    args = {"model": "chgnet", "temperatures": (300.0,), "harmonic_settings": HS, "tdph_settings": TS,
            "campaign": "local-test", "device": "cpu", **kw}
    return TDPhononMaker(**args)


def test_maker_flow_structure_and_categories():
    flow = _maker().make(_si(), "Si", model_sha256="0" * 64)
    names = [j.name for j in flow.jobs]
    assert names == ["Si harmonic phonons", "Si sampling", "Si force constants", "Si metrics"]
    cats = [j.config.manager_config.get("_category") for j in flow.jobs]
    assert cats == ["tdphonon-gpu", "tdphonon-cpu", "tdphonon-gpu", "tdphonon-cpu"]
    keys = {j.metadata["tdphonon_key"] for j in flow.jobs}
    assert len(keys) == 1
    # the key changes with model, settings and structure, not with the label
    m = _maker()
    k0 = m.key(_si(), "a" * 64)
    assert k0 == m.key(_si(), "a" * 64)
    assert k0 != m.key(_si(), "b" * 64)
    assert k0 != _maker(temperatures=(600.0,)).key(_si(), "a" * 64)
    assert k0 != m.key(_nacl(), "a" * 64)
    # invalid settings are refused at submission time, not on the worker
    with pytest.raises(ValueError):
        _maker(tdph_settings={"estimator": "nonsense"})


def test_flow_reproduces_in_process_pipeline(chgnet, tmp_path):
    """The four jobs are thin wrappers: the same numbers as run_tdph with the same settings."""
    from tdphonon.campaign import MaterialInput, local_store, query, run_local
    from tdphonon.jobs import harmonic_settings_from_dict
    from tdphonon.pipeline import run_tdph
    from tdphonon.renormalize import TDPHSettings

    store = local_store(tmp_path / "store")
    rep = run_local([MaterialInput("Si", _si(), "test")], _maker(), store)
    assert [d["label"] for d in rep.submitted] == ["Si"] and not rep.failed
    doc = query(store, load_arrays=True)[0]
    ref = run_tdph(_si(), chgnet, [300.0], harmonic_settings_from_dict(HS), TDPHSettings.from_dict(TS), label="Si")
    r = ref.temperatures[0].renormalization
    t = doc["temperatures"][0]
    assert t["r_full"] == pytest.approx(r.metrics["r_full"], rel=1e-9, abs=1e-12)
    assert t["r_onsite_max"] == pytest.approx(r.metrics["r_onsite_max"], rel=1e-9)
    assert t["frequency_shift"] == pytest.approx(r.metrics["frequency_shift"], rel=1e-9)
    assert t["seeds"] == list(r.seeds)
    fc_t = np.asarray(doc["force_constants"]["renormalized"][0])
    p2s = ref.harmonic.phonon.primitive.p2s_map
    np.testing.assert_allclose(fc_t, r.force_constants[p2s], atol=1e-10)
    assert doc["model_sha256"] == chgnet.identity.sha256
    assert doc["spacegroup_number"] == 227 and doc["crystal_system"] == "cubic"
    assert doc["provenance"]["jobs"][-1]["job_name"] == "Si metrics"
    # the stored document references the arrays instead of holding them
    raw = store.docs_store.query_one({"metadata.tdphonon_step": "metrics"})
    assert raw["output"]["force_constants"]["store"] == "data"
    assert len(json.dumps(raw, default=str)) < 100_000


def test_sampling_step_is_checked_by_the_estimator(chgnet):
    from tdphonon.errors import SamplingError
    from tdphonon.harmonic import harmonic_phonons
    from tdphonon.jobs import harmonic_settings_from_dict
    from tdphonon.renormalize import TDPHSettings, initial_samples, renormalize

    harm = harmonic_phonons(_si(), chgnet, harmonic_settings_from_dict(HS), label="Si")
    ts = TDPHSettings.from_dict(TS)
    samp = initial_samples(harm.phonon, 300.0, ts, "Si")
    res = renormalize(harm.phonon, chgnet, [300.0], ts, "Si", initial_displacements={300.0: samp.displacements})
    assert res[0].seeds[0] == samp.settings["seed"]
    with pytest.raises(SamplingError, match="differ"):
        renormalize(harm.phonon, chgnet, [300.0], ts, "Si",
                    initial_displacements={300.0: samp.displacements * 1.01})


def test_local_campaign_failures_duplicates_query_export(chgnet, tmp_path):
    from typer.testing import CliRunner

    from tdphonon.cli import app

    inp = tmp_path / "in"
    inp.mkdir()
    _si().to(filename=str(inp / "Si.cif"))
    _nacl().to(filename=str(inp / "POSCAR_NaCl"), fmt="poscar")
    # einsteinium: a valid structure the model does not cover -> fails on its own, others complete
    Structure(Lattice.cubic(5.5), ["Es", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]).to(filename=str(inp / "EsCl.cif"))
    (inp / "broken.cif").write_text("data_nothing\n")
    out = tmp_path / "runs"
    args = ["campaign", str(inp), "--local", str(out), "-m", "chgnet", "-c", "demo", "--n-configurations", "4",
            "--no-relax", "--supercell", "2 2 2", "--device", "cpu"]
    r = CliRunner()
    res = r.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "2 done/submitted, 0 duplicates, 1 failed, 1 unreadable" in " ".join(res.output.split())
    res = r.invoke(app, ["query", "--local", str(out), "--failed"])
    fails = json.loads(res.stdout)
    assert [f["label"] for f in fails] == ["EsCl"] and "Es" in fails[0]["reason"]
    # resubmission: nothing recomputed
    res = r.invoke(app, args)
    assert "0 done/submitted, 2 duplicates" in " ".join(res.output.split())
    res = r.invoke(app, ["query", "--local", str(out), "--format", "json", "--elements", "Na"])
    assert [d["label"] for d in json.loads(res.stdout)] == ["POSCAR_NaCl"]
    res = r.invoke(app, ["query", "--local", str(out), "--format", "csv", "--spacegroup", "Fd-3m"])
    lines = res.stdout.strip().splitlines()
    assert lines[0].startswith("label,") and len(lines) == 2 and lines[1].startswith("Si,")
    res = r.invoke(app, ["export", "--local", str(out), "-o", str(tmp_path / "exp")])
    assert res.exit_code == 0, res.output
    import phonopy

    ph = phonopy.load(tmp_path / "exp" / "demo" / "Si" / "phonopy_300K.yaml", log_level=0)
    assert ph.force_constants.shape[1] == len(ph.supercell) == 64  # conventional 8-atom cell, 2x2x2


def test_read_inputs_formats(tmp_path, si_structure):
    from tdphonon.campaign import read_inputs

    d = tmp_path / "db"
    (d / "mp-149").mkdir(parents=True)
    from tdphonon.harmonic import make_phonopy

    ph = make_phonopy(si_structure, np.diag([1, 1, 1]))
    ph.save(str(d / "mp-149" / "phonopy_params.yaml"))
    si_structure.to(filename=str(d / "Si.cif"))
    (d / "notes.txt").write_text("ignored: not a structure file")
    mats, skipped = read_inputs(d)
    assert sorted(m.label for m in mats) == ["Si", "mp-149"] and not skipped
    assert all(len(m.structure) == 8 for m in mats)
    csv_file = tmp_path / "list.csv"
    csv_file.write_text("label,path\nsilicon,db/Si.cif\nmissing,db/nope.cif\n")
    mats, skipped = read_inputs(csv_file)
    assert [m.label for m in mats] == ["silicon"]
    assert skipped[0]["label"] == "missing" and "not found" in skipped[0]["reason"]
    js = tmp_path / "list.json"
    overlapping = Structure(Lattice.cubic(4.0), ["Na", "Cl"], [[0, 0, 0], [0.01, 0, 0]])
    js.write_text(json.dumps([{"label": "a", "structure": si_structure.as_dict()},
                              {"label": "bad", "structure": overlapping.as_dict()}]))
    mats, skipped = read_inputs(js)
    assert [m.label for m in mats] == ["a"]
    assert skipped[0]["label"] == "bad" and "overlapping atoms" in skipped[0]["reason"]


def test_campaign_keys_find_results_stored_by_earlier_versions():
    """Each key an earlier commit stored (tests/data/campaign_keys_history.json, computed with that commit's
    code) is among today's keys of the settings that run the same computation, and of no other: one-shot
    runs find every version's results; a self-consistent run with adaptive mixing finds only the versions
    that had it (before 8949713 every run mixed with a fixed α)."""
    from pathlib import Path

    from tdphonon.flows import TDPhononMaker

    hist = json.loads((Path(__file__).parent / "data" / "campaign_keys_history.json").read_text())
    s = Structure(Lattice.cubic(5.64), ["Na"] * 4 + ["Cl"] * 4,
                  [[0, 0, 0], [0, .5, .5], [.5, 0, .5], [.5, .5, 0], [.5, .5, .5], [.5, 0, 0], [0, .5, 0], [0, 0, .5]])
    keys = {name: TDPhononMaker(model="sevennet-0", temperatures=tuple(c["temperatures"]),
                                tdph_settings=c["tdph_settings"]).keys(s, "0" * 64)
            for name, c in hist["current"].items()}
    for e in hist["stored"]:
        found = [name for name, k in keys.items() if e["key"] in k]
        assert found == [e["same_run_now"]], (e["commit"], e["tdph_settings"], found)
    assert len({e["commit"] for e in hist["stored"] if e["same_run_now"] == "one_shot"}) == 5
    assert len({k[0] for k in keys.values()}) == len(keys)  # different runs, different canonical keys


def test_campaign_key_ignores_inert_and_off_options():
    """The canonical key leaves out what cannot change the run: self-consistent options of a one-shot run,
    quartic options of another estimator, an added option at its old-behaviour value."""
    from tdphonon.flows import TDPhononMaker

    def key(**tdph):
        return TDPhononMaker(model="sevennet-0", temperatures=(300.0,), tdph_settings=tdph).settings_digest()

    assert key() == key(mixing=0.2, tol_thz=0.01, noise_tol=3.0, reuse_samples=True, adaptive_mixing=False)
    assert key() == key(quartic_shells=3)
    assert key() != key(n_configurations=32)
    assert key(self_consistent=True) != key(self_consistent=True, mixing=0.2)
    assert key(self_consistent=True) != key(self_consistent=True, adaptive_mixing=False)
    assert key(self_consistent=True, adaptive_mixing=False) == key(self_consistent=True, adaptive_mixing=False,
                                                                   min_mixing=0.3)
    assert key(self_consistent=True) != key(self_consistent=True, noise_tol=3.0)
    assert key(self_consistent=True) == key(self_consistent=True, noise_tol=0.0)
