"""The campaign against a real MongoDB-protocol server: FireWorks launchpad + jobflow stores.

The module starts ``secantusd-py`` (SecantusDB: MongoDB wire protocol on WiredTiger) itself on a
free port and stops it by pid. Set ``TDPHONON_TEST_MONGODB_URI=mongodb://...`` to run the same tests
against a real MongoDB instead (the server-restart test is then skipped). Either way the launchpad
and the stores connect through a URI (``uri_mode``; MongoStore / GridFSStore with ``uri``).

One campaign is driven through its life in order (the tests share state and must run in file
order): submit 3 materials → a misconfigured worker fizzles one firework → a worker is SIGKILLed
mid-job → two workers run concurrently → ``rerun`` recovers the fizzled and the lost run → all
complete, with no duplicate documents → resubmission is a no-op → the data survive a server
restart → the CLI sees the same results.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tdphonon.testing import Server

pytestmark = [pytest.mark.campaign]

BIN = Path(sys.executable).parent
DB = "tdphonon_test"
CAMPAIGN = "ci"
EXTERNAL = os.environ.get("TDPHONON_TEST_MONGODB_URI")


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("campaign")
    server = None
    if EXTERNAL:
        uri = EXTERNAL
    else:
        server = Server(root)
        server.start()
        uri = f"mongodb://127.0.0.1:{server.port}"
    lp_file = root / "my_launchpad.yaml"
    lp_file.write_text(f"host: '{uri}'\nuri_mode: true\nname: {DB}_fw\n")
    jf_file = root / "jobflow.yaml"
    jf_file.write_text(
        "JOB_STORE:\n"
        f"  docs_store: {{type: MongoStore, uri: '{uri}', database: {DB}, collection_name: outputs}}\n"
        "  additional_stores:\n"
        f"    data: {{type: GridFSStore, uri: '{uri}', database: {DB}, collection_name: outputs_blobs}}\n")
    from tdphonon.campaign import load_launchpad

    lp = load_launchpad(lp_file)
    lp.reset("", require_password=False)
    yield {"root": root, "server": server, "lp_file": lp_file, "jf_file": jf_file, "uri": uri}
    if server:
        server.stop()


def _worker_env(**extra) -> dict:
    e = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TDPHONON_DEVICE="cpu", PYTHONWARNINGS="ignore")
    e.update(extra)
    return e


def _rlaunch(env, mode: str = "rapidfire", wait: bool = True, name: str = "w", fworker: str = "my_fworker.yaml",
             **extra):
    d = env["root"] / "launches" / f"{name}-{time.time_ns()}"
    d.mkdir(parents=True)
    cmd = [str(BIN / "rlaunch"), "-l", str(env["lp_file"]), "-w", str(Path(__file__).parents[1] / fworker), mode]
    if mode == "rapidfire":  # one pass: stop when nothing is READY (instead of waiting for WAITING ones)
        cmd += ["--max_loops", "1", "--sleep", "1"]
    e = _worker_env(JOBFLOW_CONFIG_FILE=str(env["jf_file"]), **extra)
    log = open(d / "rlaunch.log", "w")
    proc = subprocess.Popen(cmd, cwd=d, env=e, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    if wait:
        proc.wait(900)
        log.close()
        assert proc.returncode == 0, (d / "rlaunch.log").read_text()[-3000:]
    return proc, d


def _materials():
    from pymatgen.core import Lattice, Structure

    from tdphonon.campaign import MaterialInput
    from tdphonon.structures import load_structure

    si = Structure.from_spacegroup("Fd-3m", Lattice.cubic(5.45), ["Si"], [[0, 0, 0]])
    nacl = Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.65), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    sto = load_structure(Path(__file__).parents[1] / "examples" / "SrTiO3.cif")
    return [MaterialInput("Si", si.get_primitive_structure(), "test"),
            MaterialInput("NaCl", nacl.get_primitive_structure(), "test"),
            MaterialInput("SrTiO3", sto, "test")]


def _maker():
    from tdphonon.flows import TDPhononMaker

    return TDPhononMaker(model="chgnet", temperatures=(300.0,), campaign=CAMPAIGN,
                         harmonic_settings={"relax": True, "fmax": 0.02, "standardize": False,
                                            "supercell_matrix": [2, 2, 2], "mesh": [8, 8, 8], "band_npoints": 11},
                         tdph_settings={"n_configurations": 4, "estimator": "force_fit", "cap_mode": "clip"})


def _lp(env):
    from tdphonon.campaign import load_launchpad

    return load_launchpad(env["lp_file"])


def _store(env):
    from tdphonon.campaign import load_store

    s = load_store(env["jf_file"])
    s.connect()
    return s


def _states(lp) -> dict[int, str]:
    return {d["fw_id"]: d["state"] for d in lp.fireworks.find({}, {"fw_id": 1, "state": 1})}


def test_submit_three_materials(env):
    from tdphonon.campaign import status, submit

    rep = submit(_materials(), _maker(), _lp(env), _store(env))
    assert [d["label"] for d in rep.submitted] == ["Si", "NaCl", "SrTiO3"]
    assert not rep.duplicates
    assert all(len(d["fw_ids"]) == 4 for d in rep.submitted)
    st = status(_lp(env), CAMPAIGN)[CAMPAIGN]
    assert st["n_materials"] == 3 and st["fireworks"] == {"READY": 3, "WAITING": 9}
    # GPU jobs and light jobs carry their categories
    cats = sorted(d["spec"]["_category"] for d in _lp(env).fireworks.find({}, {"spec._category": 1}))
    assert cats == ["tdphonon-cpu"] * 6 + ["tdphonon-gpu"] * 6


def test_misconfigured_worker_fizzles_one_material(env):
    from tdphonon.campaign import failures

    # a worker that asks for a GPU it does not have: its one rocket fizzles, with the reason stored
    _rlaunch(env, "singleshot", name="badgpu", TDPHONON_DEVICE="cuda")
    fails = failures(_lp(env), CAMPAIGN)
    assert len(fails) == 1
    assert "CUDA" in fails[0]["reason"] and fails[0]["label"] in {"Si", "NaCl", "SrTiO3"}
    assert fails[0]["name"].endswith("harmonic phonons")
    env["fizzled"] = fails[0]


def test_killed_worker_leaves_a_running_firework(env):
    lp = _lp(env)
    proc, _ = _rlaunch(env, "singleshot", wait=False, name="killed")
    deadline = time.time() + 300
    running = []
    while time.time() < deadline and not running:
        running = [i for i, s in _states(lp).items() if s == "RUNNING"]
        time.sleep(0.1)
    assert running, "the worker never started a firework"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    time.sleep(0.5)
    assert _states(lp)[running[0]] == "RUNNING"  # nobody knows yet: lost-run detection must find it
    env["lost"] = running[0]


def test_two_concurrent_workers_complete_the_rest(env):
    procs = [_rlaunch(env, "rapidfire", wait=False, name=f"conc{k}")[0] for k in range(2)]
    for p in procs:
        assert p.wait(900) == 0
    lp = _lp(env)
    states = _states(lp)
    assert states[env["fizzled"]["fw_id"]] == "FIZZLED"
    assert states[env["lost"]] == "RUNNING"
    # the material that neither failure touched is complete
    from tdphonon.campaign import status

    st = status(lp, CAMPAIGN)[CAMPAIGN]
    assert st["materials"].get("COMPLETED") == 1
    # no firework was run by both workers: one launch per completed firework
    for fw in lp.fireworks.find({"state": "COMPLETED"}, {"fw_id": 1, "launches": 1}):
        assert len(fw["launches"]) == 1, fw


def test_rerun_recovers_fizzled_and_lost(env):
    from tdphonon.campaign import rerun

    lp = _lp(env)
    dry = rerun(lp, CAMPAIGN, lost_after=1.0, dry_run=True)
    assert [f["fw_id"] for f in dry["lost"]] == [env["lost"]]
    assert [f["fw_id"] for f in dry["fizzled"]] == [env["fizzled"]["fw_id"]]
    assert "CUDA" in dry["fizzled"][0]["reason"] and "lost run" in dry["lost"][0]["reason"]
    assert _states(lp)[env["lost"]] == "RUNNING"  # dry run changed nothing
    rep = rerun(lp, CAMPAIGN, lost_after=1.0)
    assert rep["rerun"]
    states = _states(lp)
    assert states[env["lost"]] == "READY" and states[env["fizzled"]["fw_id"]] == "READY"
    _rlaunch(env, "rapidfire", name="final")
    assert set(_states(lp).values()) == {"COMPLETED"}


def test_results_queryable_without_duplicates(env):
    from tdphonon.campaign import query

    store = _store(env)
    docs = query(store, campaign=CAMPAIGN)
    assert sorted(d["label"] for d in docs) == ["NaCl", "Si", "SrTiO3"]
    # one stored output per job: 4 jobs x 3 materials, reruns overwrote (same uuid and index)
    outputs = list(store.docs_store.query({}, properties=["uuid", "index"]))
    assert len(outputs) == 12
    assert len({(o["uuid"], o["index"]) for o in outputs}) == 12
    for d in docs:
        assert d["model"]["name"] == "CHGNet-0.3.0" and len(d["model_sha256"]) == 64
        assert d["provenance"]["packages"]["phonopy"] and d["dedup_key"]
        t = d["temperatures"][0]
        assert np.isfinite(t["r_full"]) and t["r_onsite_max"] > 0 and t["force_calls"] >= 4
        # the big arrays are not in the document: GridFS references
        assert d["force_constants"]["store"] == "data" and "blob_uuid" in d["force_constants"]
        assert len(json.dumps(d, default=str)) < 200_000
    # filters: elements, space group, screening threshold
    assert [d["label"] for d in query(store, elements=["Na"])] == ["NaCl"]
    assert sorted(d["label"] for d in query(store, spacegroup=221)) == ["SrTiO3"]
    assert {d["label"] for d in query(store, spacegroup="Fd-3m")} == {"Si"}
    big = min(d["r_onsite_max"] for d in docs)
    assert len(query(store, r_onsite_min=big)) == 3
    assert len(query(store, r_onsite_min=1e9)) == 0
    # arrays come back from GridFS and reproduce the phonopy object
    from tdphonon.jobs import phonopy_from_output

    full = query(store, load_arrays=True, label="SrTiO3")[0]
    fcs = full["force_constants"]
    fc_t = np.asarray(fcs["renormalized"][0])
    assert fc_t.shape == (5, 40, 3, 3)
    ph = phonopy_from_output({**full, "force_constants": fc_t})
    assert abs(ph.force_constants.sum(axis=1)).max() < 1e-8  # acoustic sum rule


def test_model_loaded_once_per_worker_process(env):
    store = _store(env)
    runs = [d["output"]["run"] for d in store.query({"metadata.tdphonon_step": {"$in": ["harmonic phonons",
                                                                                        "force constants"]}})]
    assert len(runs) == 6
    by_pid: dict[int, list[bool]] = {}
    for r in runs:
        by_pid.setdefault(r["model_load"]["pid"], []).append(r["model_load"]["loaded_in_this_job"])
    for loads in by_pid.values():
        assert sum(loads) <= 1  # the first model job of a worker process loads it, the others reuse it
    assert any(len(v) > 1 for v in by_pid.values())  # some worker ran several model jobs


def test_resubmission_is_a_noop(env):
    from tdphonon.campaign import submit

    lp = _lp(env)
    n_wf = lp.workflows.count_documents({})
    rep = submit(_materials(), _maker(), lp, _store(env))
    assert not rep.submitted and len(rep.duplicates) == 3
    assert lp.workflows.count_documents({}) == n_wf
    # a finished result found only in the store (e.g. another launchpad) also counts
    lp2_name = f"{DB}_fw_other"
    from fireworks import LaunchPad

    lp2 = LaunchPad(host=lp.host, uri_mode=True, name=lp2_name)
    lp2.reset("", require_password=False)
    rep2 = submit(_materials(), _maker(), lp2, _store(env))
    assert not rep2.submitted and all("store" in d["reason"] for d in rep2.duplicates)
    lp2.connection.drop_database(lp2_name)


def test_data_survive_server_restart(env):
    if env["server"] is None:
        pytest.skip("external MongoDB: not restarted by the tests")
    from tdphonon.campaign import query

    env["server"].stop()
    env["server"].start()
    docs = query(_store(env), campaign=CAMPAIGN, load_arrays=True)
    assert len(docs) == 3 and all(len(d["force_constants"]["renormalized"]) == 1 for d in docs)
    assert set(_states(_lp(env)).values()) == {"COMPLETED"}


def test_cli_status_query_export(env, tmp_path):
    from typer.testing import CliRunner

    from tdphonon.cli import app

    r = CliRunner()
    res = r.invoke(app, ["status", "-l", str(env["lp_file"]), "-c", CAMPAIGN])
    assert res.exit_code == 0, res.output
    assert "3 materials" in res.output and "COMPLETED" in res.output
    res = r.invoke(app, ["query", "-s", str(env["jf_file"]), "-c", CAMPAIGN, "--format", "json",
                         "--elements", "Sr", "--spacegroup", "221"])
    assert res.exit_code == 0, res.output
    docs = json.loads(res.stdout)
    assert [d["label"] for d in docs] == ["SrTiO3"]
    res = r.invoke(app, ["export", "-s", str(env["jf_file"]), "-c", CAMPAIGN, "-o", str(tmp_path)])
    assert res.exit_code == 0, res.output
    import phonopy

    ph = phonopy.load(tmp_path / CAMPAIGN / "SrTiO3" / "phonopy_300K.yaml", log_level=0)
    assert ph.force_constants is not None and len(ph.supercell) == 40
    assert json.loads((tmp_path / CAMPAIGN / "Si" / "summary.json").read_text())["label"] == "Si"


def test_cli_analyze_reads_the_mongodb_store(env, tmp_path):
    """``tdphonon analyze`` on the MongoDB job store of the campaign (same code path as a cluster)."""
    from typer.testing import CliRunner

    from tdphonon.cli import app

    res = CliRunner().invoke(app, ["analyze", "-s", str(env["jf_file"]), "-c", CAMPAIGN, "-o", str(tmp_path),
                                   "--exclude-cut-samples", "--exclude-step-sensitive"])
    assert res.exit_code == 0, res.output
    summary = json.loads((tmp_path / "analysis.json").read_text())
    assert summary["n_materials"] == 3 and summary["campaign"] == CAMPAIGN
    assert summary["exclude"] == ["step_sensitive", "cut_samples"] and summary["excluded"] == []  # none was cut
    assert not summary["global_model"]["fitted"]  # 3 materials: reported, not fitted
    sites = (tmp_path / "sites.csv").read_text().splitlines()
    assert sum(line.startswith("SrTiO3,") for line in sites) == 3  # Sr, Ti, O
    assert "data:image/png;base64," in (tmp_path / "report.html").read_text()


def test_validation_branch_goes_to_dft_workers_only(env, tmp_path):
    """``tdphonon validate`` submits the validation branch; GPU workers leave it, a DFT worker runs it."""
    from pymatgen.core import Structure
    from typer.testing import CliRunner

    from tdphonon.cli import app
    from tdphonon.validation.campaign import validation_results

    cu = Structure.from_spacegroup("Fm-3m", [[3.6, 0, 0], [0, 3.6, 0], [0, 0, 3.6]], ["Cu"],
                                   [[0, 0, 0]]).get_primitive_structure()
    cand = tmp_path / "candidates.json"
    cand.write_text(json.dumps([{"label": "Cu", "structure": cu.as_dict()}]))
    settings = {"supercell_matrix": [[-2, 2, 2], [2, -2, 2], [2, 2, -2]], "n_configurations": 12,
                "shells": {"2": 1, "3": 1, "4": 1}, "temperatures": [300.0], "kappa_mesh": [6, 6, 6],
                "kappa_convergence_meshes": [[4, 4, 4], [6, 6, 6]]}
    res = CliRunner().invoke(app, ["validate", str(cand), "--calculator", "emt", "-c", "val",
                                   "--settings", json.dumps(settings), "-l", str(env["lp_file"]),
                                   "-s", str(env["jf_file"])])
    assert res.exit_code == 0, res.output
    lp = _lp(env)
    val_ids = [d["fw_id"] for d in lp.fireworks.find({"spec.tdphonon_branch": "validation"},
                                                    {"fw_id": 1})]
    assert len(val_ids) == 4
    _rlaunch(env, name="gpu-only")  # the GPU worker must not take the reference (DFT) jobs
    states = _states(lp)
    assert all(states[i] != "COMPLETED" for i in val_ids)
    _rlaunch(env, name="dft", fworker="launchers/my_fworker_dft.yaml")
    _rlaunch(env, name="dft2", fworker="launchers/my_fworker_dft.yaml")
    states = _states(lp)
    assert all(states[i] == "COMPLETED" for i in val_ids), states
    docs = validation_results(_store(env), "val")
    assert len(docs) == 1 and docs[0]["comparison"]["kappa_l"][0]["scph_3ph_wmk"] > 0


def _results_store(env, campaign: str, docs):
    """A job store in its own database (no campaign documents touched) holding minimal result documents
    ``(label, output fields)`` of ``campaign``."""
    from jobflow import JobStore
    from maggma.stores import MongoStore

    from tdphonon.campaign import METRICS_STEP

    store = JobStore(MongoStore(uri=env["uri"], database=f"{DB}_{campaign}", collection_name="outputs"))
    store.connect()
    base = {"campaign": campaign, "formula": "X", "spacegroup_symbol": "Pm-3m", "spacegroup_number": 221,
            "model": {"name": "m"}, "n_atoms_supercell": 40}
    store.docs_store.update([{"uuid": label, "index": 1, "metadata": {"tdphonon_step": METRICS_STEP},
                              "output": {"label": label, **base, **fields}} for label, fields in docs], key="uuid")
    return store


def test_query_can_exclude_imaginary_fixed_points(env, tmp_path):
    """``exclude_imaginary_fixed_points`` on a real MongoDB wire protocol (own database: no campaign docs touched):
    at the filtered temperature when per-temperature conditions are given, else at any temperature;
    one-shot (None) and pre-flag documents (no field) are kept."""
    from tdphonon.campaign import query

    def doc(label, temps):
        return label, {"temperatures": [{"r_full": 0.1, "frequency_shift": 0.1, **x} for x in temps]}

    t = {"temperature": 300.0, "r_onsite_max": 0.2}
    store = _results_store(env, "ifp", [
        doc("real", [{**t, "imaginary_fixed_point": False}]),
        doc("imag300", [{"temperature": 100.0, "r_onsite_max": 0.3, "imaginary_fixed_point": False},
                        {**t, "imaginary_fixed_point": True}]),
        doc("oneshot", [{**t, "imaginary_fixed_point": None}]),
        doc("old", [dict(t)]),
    ])

    def labels(**kw):
        return [d["label"] for d in query(store, campaign="ifp", **kw)]

    assert labels() == ["imag300", "old", "oneshot", "real"]
    assert labels(exclude_imaginary_fixed_points=True) == ["old", "oneshot", "real"]
    assert labels(exclude_imaginary_fixed_points=True, temperature=300.0) == ["old", "oneshot", "real"]
    assert labels(exclude_imaginary_fixed_points=True, temperature=100.0) == ["imag300"]
    assert labels(exclude_imaginary_fixed_points=True, r_onsite_min=0.25) == ["imag300"]  # its 100 K entry
    assert labels(r_onsite_min=0.15, temperature=300.0) == ["imag300", "old", "oneshot", "real"]
    # the same through the command line
    from typer.testing import CliRunner

    from tdphonon.cli import app

    jf = tmp_path / "jobflow.yaml"
    jf.write_text(env["jf_file"].read_text().replace(f"database: {DB},", f"database: {DB}_ifp,"))
    res = CliRunner().invoke(app, ["query", "--store", str(jf), "-c", "ifp", "--exclude-imaginary-fixed-points",
                                   "--format", "json"])
    assert res.exit_code == 0, res.output
    assert [d["label"] for d in json.loads(res.stdout)] == ["old", "oneshot", "real"]


def test_query_can_exclude_step_sensitive_results(env, tmp_path):
    """``exclude_step_sensitive`` (a real MongoDB wire protocol, own database) drops the results whose harmonic
    step check flagged step-dependent force constants and keeps unchecked ones; the CSV rows say which."""
    from tdphonon.campaign import query, rows

    def doc(label, check):
        return label, {"harmonic": {"imaginary": None, **({"step_check": check} if check else {})},
                       "temperatures": [{"temperature": 300.0, "r_full": 0.1, "r_onsite_max": 0.2,
                                         "frequency_shift": 0.1}]}

    store = _results_store(env, "step", [doc("rough", {"step_sensitive": True, "max_change_thz": 2.7}),
                                         doc("smooth", {"step_sensitive": False, "max_change_thz": 0.01}),
                                         doc("unchecked", None)])
    got = query(store, campaign="step")
    assert [d["label"] for d in got] == ["rough", "smooth", "unchecked"]
    assert [r["step_sensitive"] for r in rows(got)] == [True, False, None]
    assert [d["label"] for d in query(store, campaign="step", exclude_step_sensitive=True)] == ["smooth", "unchecked"]


def test_query_can_exclude_cut_samples(env):
    """``exclude_cut_samples`` (a real MongoDB wire protocol, own database) drops the results with dropped
    configurations or clipped displacements at any temperature, and keeps documents without those fields."""
    from tdphonon.campaign import query

    def doc(label, t300, t600):
        base = {"r_full": 0.1, "r_onsite_max": 0.2, "frequency_shift": 0.1}
        return label, {"harmonic": {"imaginary": None},
                       "temperatures": [{"temperature": 300.0, **base, **t300}, {"temperature": 600.0, **base, **t600}]}

    store = _results_store(env, "cut", [
        doc("dropped600", {"outliers": [], "n_clipped_atoms": 0}, {"outliers": [{"configuration": 3}]}),
        doc("clipped300", {"outliers": [], "n_clipped_atoms": 4}, {"outliers": [], "n_clipped_atoms": 0}),
        doc("full", {"outliers": [], "n_clipped_atoms": 0}, {"outliers": [], "n_clipped_atoms": 0}),
        doc("older", {}, {})])  # documents from before n_clipped_atoms
    assert [d["label"] for d in query(store, campaign="cut")] == ["clipped300", "dropped600", "full", "older"]
    assert [d["label"] for d in query(store, campaign="cut", exclude_cut_samples=True)] == ["full", "older"]


def test_submit_finds_results_stored_under_earlier_keys(env):
    """Resubmitting a campaign after an upgrade: a result stored (or a workflow added) under the key an
    earlier version computed (tests/data/campaign_keys_history.json) is a duplicate, reported under that
    key; a run that differs from the stored one (adaptive vs fixed mixing) is not. Own databases: no
    campaign documents touched."""
    from fireworks import Firework, LaunchPad, ScriptTask, Workflow
    from jobflow import JobStore
    from maggma.stores import MongoStore
    from pymatgen.core import Lattice, Structure

    from tdphonon.campaign import METRICS_STEP, MaterialInput, submit
    from tdphonon.flows import TDPhononMaker

    hist = json.loads((Path(__file__).parent / "data" / "campaign_keys_history.json").read_text())
    old = {(e["commit"], e["same_run_now"]): e["key"] for e in hist["stored"]}
    nacl = [MaterialInput("NaCl", Structure(Lattice.cubic(5.64), ["Na"] * 4 + ["Cl"] * 4, [
        [0, 0, 0], [0, .5, .5], [.5, 0, .5], [.5, .5, 0], [.5, .5, .5], [.5, 0, 0], [0, .5, 0], [0, 0, .5]]), "test")]

    def maker(name):
        c = hist["current"][name]
        return TDPhononMaker(model="sevennet-0", temperatures=tuple(c["temperatures"]),
                             tdph_settings=c["tdph_settings"])

    store = JobStore(MongoStore(uri=env["uri"], database=f"{DB}_oldkeys", collection_name="outputs"))
    store.connect()
    store.docs_store.update([
        {"uuid": "one-shot-9f49e15", "index": 1, "metadata": {"tdphonon_step": METRICS_STEP},
         "output": {"dedup_key": old["9f49e15", "one_shot"]}},
        {"uuid": "fixed-mixing-934842f", "index": 1, "metadata": {"tdphonon_step": METRICS_STEP},
         "output": {"dedup_key": old["934842f", "sc_fixed_mixing"]}}], key="uuid")
    lp = LaunchPad(host=env["uri"], uri_mode=True, name=f"{DB}_fw_oldkeys")
    lp.reset("", require_password=False)
    lp.add_wf(Workflow([Firework(ScriptTask.from_str("true"))],
                       metadata={"tdphonon_key": old["7e58118", "one_shot_force_fit"]}))
    sha = "0" * 64

    rep = submit(nacl, maker("one_shot"), lp, store, model_sha=sha)
    assert not rep.submitted and rep.duplicates[0]["key"] == old["9f49e15", "one_shot"]
    assert "store" in rep.duplicates[0]["reason"]
    rep = submit(nacl, maker("one_shot_force_fit"), lp, store, model_sha=sha)
    assert not rep.submitted and rep.duplicates[0]["key"] == old["7e58118", "one_shot_force_fit"]
    assert "launchpad" in rep.duplicates[0]["reason"]
    rep = submit(nacl, maker("sc_fixed_mixing"), lp, store, model_sha=sha)
    assert not rep.submitted and rep.duplicates[0]["key"] == old["934842f", "sc_fixed_mixing"]
    rep = submit(nacl, maker("sc_plain"), lp, store, model_sha=sha)  # adaptive mixing: a new run
    assert not rep.duplicates and len(rep.submitted) == 1
    wf = lp.workflows.find_one({"metadata.tdphonon_key": rep.submitted[0]["key"]})
    assert wf is not None and rep.submitted[0]["key"] == maker("sc_plain").key(nacl[0].structure, sha)
    lp.connection.drop_database(f"{DB}_fw_oldkeys")
    store.docs_store._collection.database.client.drop_database(f"{DB}_oldkeys")
