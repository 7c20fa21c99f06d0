"""Fine-tuning M3GNet: dataset → train → evaluate from the CLI, checkpoints/resume, the model card."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import M3GNET_DIR, REFERENCE, requires_m3gnet, requires_reference

pytestmark = [pytest.mark.mlip, pytest.mark.shared, requires_reference, requires_m3gnet]

runner = CliRunner()
SOURCES = ["phonopy_params_Si.yaml", "phonopy_params_NaCl-fd.yaml.xz", "phonopy_params_Zr3N4.yaml"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    from tdphonon.cli import app

    out = tmp_path_factory.mktemp("ft") / "dataset"
    paths = [str(REFERENCE / "phonopy" / "test" / s) for s in SOURCES]
    res = runner.invoke(app, ["finetune", "dataset", *paths, "--out", str(out), "--n-random", "4",
                              "--held-out", "phonopy_params_Zr3N4", "--val-fraction", "0.0"])
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())
    assert "train 8 structures (2 compound(s))" in text and "test 4 structures (1 compound(s))" in text
    return out


def test_dataset_split_by_compound(dataset):
    from tdphonon.finetune.dataset import load_dataset

    data = load_dataset(dataset)
    labels = {k: {a.info["label"] for a in v} for k, v in data.items()}
    assert labels["test"] == {"phonopy_params_Zr3N4"}
    assert labels["train"] == {"phonopy_params_Si", "phonopy_params_NaCl-fd"}
    assert sum(len(v) for v in data.values()) == 12


def test_two_epochs_lower_the_loss_and_resume_is_exact(dataset, tmp_path):
    from tdphonon.finetune.dataset import load_dataset
    from tdphonon.finetune.train import FineTuneSettings, fine_tune

    data = load_dataset(dataset)
    train, val = data["train"], data["test"]
    st = FineTuneSettings(epochs=2, lr=3e-4, batch_size=2, patience=0, device="cpu")
    full = fine_tune(M3GNET_DIR, train, val, tmp_path / "full", st, resume=False)
    card = full.card
    assert card["force_mae_after"]["train_mae"] < card["force_mae_before"]["train_mae"]
    assert card["best_epoch"] >= 0 and card["epochs_run"] == 2

    class Stop(Exception):
        pass

    def stop_after_first(epoch, total, rec):
        if epoch == 1:
            raise Stop

    with pytest.raises(Stop):
        fine_tune(M3GNET_DIR, train, val, tmp_path / "cut", st, progress=stop_after_first, resume=False)
    resumed = fine_tune(M3GNET_DIR, train, val, tmp_path / "cut", st, resume=True)
    # deterministic algorithms: bitwise the same (float32 multi-threaded scatter sums no longer vary)
    def same_history(a, b):
        return [h["train_mae"] for h in a] == [h["train_mae"] for h in b]

    assert same_history(resumed.history, full.history)
    assert resumed.card["force_mae_after"] == card["force_mae_after"]
    assert resumed.card["sha256"] == card["sha256"] and card["deterministic_algorithms"] is True
    # a wall-time budget stops after the epoch that exceeds it, checkpointed; resuming without it is exact
    budget = fine_tune(M3GNET_DIR, train, val, tmp_path / "budget", FineTuneSettings(
        epochs=2, lr=3e-4, batch_size=2, patience=0, device="cpu", max_seconds=0.0), resume=False)
    assert budget.card["epochs_run"] == 1 and "wall-time budget" in budget.card["stopped_early"]
    cont = fine_tune(M3GNET_DIR, train, val, tmp_path / "budget", st, resume=True)
    assert same_history(cont.history, full.history)
    assert cont.card["stopped_early"] is None
    # a checkpoint of other settings is refused, not silently mixed
    from tdphonon.errors import TDPhononError

    with pytest.raises(TDPhononError, match="other settings"):
        fine_tune(M3GNET_DIR, train, val, tmp_path / "cut", FineTuneSettings(epochs=3, device="cpu"))
    # L2-SP (anchor_weight): the pull towards the base weights keeps them closer to them; the history
    # records the squared drift ‖θ − θ_base‖² of every epoch
    anchored = fine_tune(M3GNET_DIR, train, val, tmp_path / "anchored", FineTuneSettings(
        epochs=2, lr=3e-4, batch_size=2, patience=0, device="cpu", anchor_weight=100.0), resume=False)
    assert all(h["drift2"] > 0 for h in full.history)
    assert all(a["drift2"] < 0.5 * f["drift2"] for a, f in zip(anchored.history, full.history, strict=True))
    assert anchored.card["settings"]["anchor_weight"] == 100.0


def test_learning_rate_multipliers_per_module(dataset, tmp_path):
    """lr_multipliers: factor 0 freezes the named module exactly, a factor > 1 moves it further than the
    plain run, the rest of the model trains as usual; bad prefixes and factors are refused. The three-body
    gate biases are set before training when asked."""
    import matgl
    import torch

    from tdphonon.errors import TDPhononError
    from tdphonon.finetune.dataset import load_dataset
    from tdphonon.finetune.recipe import parse_lr_mult
    from tdphonon.finetune.train import FineTuneSettings, _set_three_body_gate_bias, fine_tune

    data = load_dataset(dataset)
    train, val = data["train"], data["test"]
    tb = "three_body_interactions"
    base = matgl.load_model(str(M3GNET_DIR)).model.state_dict()

    def drift(res, inside):
        new = matgl.load_model(str(res.model_dir)).model.state_dict()
        return sum(float((new[k] - base[k]).abs().sum()) for k in base
                   if base[k].is_floating_point() and (tb in k) == inside)

    def run(name, mult, gate=None):
        st = FineTuneSettings(epochs=1, lr=3e-4, batch_size=2, patience=0, device="cpu", keep="last",
                              lr_multipliers=mult, three_body_gate_bias=gate)
        return fine_tune(M3GNET_DIR, train, val, tmp_path / name, st, resume=False)

    plain, frozen, fast = run("plain", ()), run("frozen", ((tb, 0.0),)), run("fast", [[tb, 10]])
    assert drift(frozen, inside=True) == 0.0 and drift(frozen, inside=False) > 0
    assert drift(fast, inside=True) > 3 * drift(plain, inside=True) > 0
    assert fast.card["settings"]["lr_multipliers"] == ((tb, 10.0),)
    # the history's "lr" is the base rate, whatever the other groups get
    assert fast.history[0]["lr"] == plain.history[0]["lr"]
    # JSON gives lists back: the settings stay equal, so a checkpoint resumes
    st = FineTuneSettings(lr_multipliers=((tb, 10.0),))
    assert FineTuneSettings(**json.loads(json.dumps(st.to_dict()))) == st
    with pytest.raises(TDPhononError, match="match no trainable parameter"):
        run("typo", (("three_body_interaction_s", 2.0),))
    with pytest.raises(TDPhononError, match="freeze every parameter"):
        run("none", tuple((m, 0.0) for m in ("embedding", "graph_layers", tb, "final_layer")))
    # three_body_gate_bias: the gates' biases are set before training (here frozen, so they stay exactly so)
    assert all(float(v.abs().max()) > 1 for k, v in base.items() if "update_network_atom.layers.0.bias" in k)
    opened = matgl.load_model(str(run("opened", ((tb, 0.0),), gate=0.0).model_dir)).model.state_dict()
    gates = [k for k in opened if "update_network_atom.layers.0.bias" in k]
    assert len(gates) == 3 and all(float(opened[k].abs().max()) == 0.0 for k in gates)
    assert all(bool((opened[k] == base[k]).all()) for k in base if tb in k and k not in gates)
    with pytest.raises(TDPhononError, match="no M3GNet three-body blocks"):
        _set_three_body_gate_bias(torch.nn.Linear(2, 2), 0.0, "a linear layer")
    with pytest.raises(ValueError, match="finite factor"):
        FineTuneSettings(lr_multipliers=((tb, -1.0),))
    with pytest.raises(ValueError, match="must be finite"):
        FineTuneSettings(three_body_gate_bias=float("nan"))
    assert parse_lr_mult("graph_layers.2=0.5") == ("graph_layers.2", 0.5)
    with pytest.raises(ValueError, match="PREFIX=FACTOR"):
        parse_lr_mult("three_body_interactions")


def _reference(label):
    from tdphonon.finetune.flows import _as_reference, read_sources

    src = next(s for s in SOURCES if s.startswith(label))
    (entry,) = read_sources([REFERENCE / "phonopy" / "test" / src]).entries
    return _as_reference(entry)


def test_phonon_mae_selection_keeps_the_epoch_with_the_best_validation_phonons(dataset, tmp_path):
    from tdphonon.errors import TDPhononError
    from tdphonon.evaluation import compare_with_reference
    from tdphonon.finetune.dataset import load_dataset
    from tdphonon.finetune.train import FineTuneSettings, fine_tune, phonon_mae
    from tdphonon.potentials import load_potential

    data = load_dataset(dataset)
    train, val = data["train"], data["test"]
    zr = _reference("phonopy_params_Zr3N4")
    st = FineTuneSettings(epochs=2, lr=3e-4, batch_size=2, patience=0, device="cpu", selection="phonon_mae")
    with pytest.raises(TDPhononError, match="needs the DFT reference sets"):
        fine_tune(M3GNET_DIR, train, val, tmp_path / "none", st)
    with pytest.raises(ValueError, match="unknown selection"):
        FineTuneSettings(selection="energy")
    res = fine_tune(M3GNET_DIR, train, val, tmp_path / "ph", st, resume=False, val_references=[zr])
    card = res.card
    # the base model's score is the plain comparison of the base model with the DFT set
    base = load_potential(str(M3GNET_DIR), device="cpu", cache=False)
    base_mae = compare_with_reference(zr, base).mae_thz
    assert card["val_phonon_mae_thz"]["before"] == pytest.approx(base_mae, rel=1e-6)
    scores = [base_mae] + [h["val_phonon_mae_thz"] for h in res.history]
    assert all(set(h["val_phonon_mae_per_set"]) == {"phonopy_params_Zr3N4"} for h in res.history)
    assert card["best_epoch"] == int(np.argmin(scores)) - 1
    assert card["selection"] == {"by": "phonon_mae", "best_score": pytest.approx(min(scores)), "unit": "THz"}
    # the saved model is the selected one: its own score is the best one recorded
    saved = load_potential(str(res.model_dir), device="cpu", cache=False)
    assert phonon_mae(saved, [zr])["mean"] == pytest.approx(min(scores), rel=1e-4)
    assert card["val_phonon_mae_thz"]["after"] == pytest.approx(min(scores), rel=1e-4)
    assert "phonon-frequency MAE" in (res.model_dir / "README.md").read_text()
    # a model that cannot score a set (here: every force over the limit) scores inf, never well
    saved.max_force = 1e-9
    bad = phonon_mae(saved, [zr])
    assert bad["mean"] == float("inf") and "UnphysicalForcesError" in bad["errors"]["phonopy_params_Zr3N4"]
    # keep="last": a finished run resumed with it writes the last epoch's weights, without training again
    assert card["kept_epoch"] == card["best_epoch"]
    with pytest.raises(ValueError, match="unknown keep"):
        FineTuneSettings(keep="first")
    last = fine_tune(M3GNET_DIR, train, val, tmp_path / "ph", dataclasses.replace(st, keep="last"),
                     val_references=[zr])
    assert len(last.history) == 2 and last.card["kept_epoch"] == 1
    # the card's wall time adds up over invocations: the re-export did not train, the run it resumed did
    assert last.card["train_seconds"] > res.history[-1]["seconds"]
    assert last.card["best_epoch"] == card["best_epoch"] and last.card["settings"]["keep"] == "last"
    final = load_potential(str(last.model_dir), device="cpu", cache=False)
    assert phonon_mae(final, [zr])["mean"] == pytest.approx(res.history[-1]["val_phonon_mae_thz"], rel=1e-4)
    assert "the last epoch's, 1" in (last.model_dir / "README.md").read_text()
    # resuming against other validation sets would mix scores: refused
    with pytest.raises(TDPhononError, match="other validation reference sets"):
        fine_tune(M3GNET_DIR, train, val, tmp_path / "ph", st, val_references=[_reference("phonopy_params_Si")])


def test_cli_train_selects_on_validation_phonons(tmp_path):
    from tdphonon.cli import app

    paths = [str(REFERENCE / "phonopy" / "test" / s) for s in SOURCES[:2]]
    ds = tmp_path / "ds"
    res = runner.invoke(app, ["finetune", "dataset", *paths, "--out", str(ds), "--n-random", "2",
                              "--val-fraction", "0.5"])
    assert res.exit_code == 0, res.output
    manifest = json.loads((ds / "manifest.json").read_text())
    val = [lab for c in manifest["compounds"].values() if c["split"] == "val" for lab in c["labels"]]
    assert len(val) == 1
    args = ["finetune", "train", str(ds), "--base", str(M3GNET_DIR), "--epochs", "1", "--device", "cpu",
            "--select", "phonon_mae"]
    res = runner.invoke(app, [*args, "--out", str(tmp_path / "m0")])
    assert res.exit_code != 0 and "needs the data set's sources" in res.output
    refs = [x for p in paths for x in ("--references", p)]
    res = runner.invoke(app, [*args, *refs, "--out", str(tmp_path / "m")])
    assert res.exit_code == 0, res.output
    assert "validation phonon-frequency MAE" in res.output
    card = json.loads((tmp_path / "m" / "model" / "model_card.json").read_text())
    assert card["val_phonon_mae_thz"]["sets"] == val and card["selection"]["by"] == "phonon_mae"
    hist = json.loads((tmp_path / "m" / "history.json").read_text())
    assert set(hist[0]["val_phonon_mae_per_set"]) == set(val)
    # sources that lack the validation compound are refused by name
    other = [p for p in paths if val[0] not in p]
    res = runner.invoke(app, [*args, "--references", other[0], "--out", str(tmp_path / "m1")])
    assert res.exit_code != 0 and val[0] in res.output and "not found" in res.output


def test_cli_train_model_card_and_harmonic(dataset, tmp_path, si_structure):
    from tdphonon.cli import app
    from tdphonon.potentials import load_potential

    out = tmp_path / "model"
    res = runner.invoke(app, ["finetune", "train", str(dataset), "--base", str(M3GNET_DIR), "--out", str(out),
                              "--epochs", "1", "--lr", "1e-4", "--device", "cpu", "--name", "tdphonon-test"])
    assert res.exit_code == 0, res.output
    card = json.loads((out / "model" / "model_card.json").read_text())
    assert card["base_model"]["name"] == "M3GNet-MP-2021.2.8-PES"
    assert card["data"]["dataset_dir"] and card["train_structures"] == 8
    pot = load_potential(str(out / "model"), device="cpu", cache=False)
    assert pot.identity.sha256 == card["sha256"] and pot.identity.name == "tdphonon-test"
    cif = tmp_path / "Si.cif"
    si_structure.to(filename=str(cif))
    res = runner.invoke(app, ["harmonic", str(cif), "--model", str(out / "model"), "--no-relax", "--supercell",
                              "1 1 1", "--out", str(tmp_path / "h")])
    assert res.exit_code == 0, res.output
    summary = json.loads((tmp_path / "h" / "summary.json").read_text())
    assert summary["model"]["sha256"] == card["sha256"]
    # --keep: an unknown choice is refused by name; 'last' re-exports the finished run without training
    base_args = ["finetune", "train", str(dataset), "--base", str(M3GNET_DIR), "--out", str(out), "--epochs", "1",
                 "--lr", "1e-4", "--device", "cpu", "--name", "tdphonon-test"]
    res = runner.invoke(app, [*base_args, "--keep", "first"])
    assert res.exit_code != 0 and "unknown keep 'first'" in res.output and "best, last" in res.output
    for bad, msg in (("three_body_interactions", "PREFIX=FACTOR"), ("threebody=2", "match no trainable")):
        res = runner.invoke(app, [*base_args, "--out", str(tmp_path / "bad"), "--lr-mult", bad])
        assert res.exit_code != 0 and msg in res.output, res.output
    res = runner.invoke(app, [*base_args, "--out", str(tmp_path / "gate"), "--epochs", "0", "--keep", "last",
                              "--lr-mult", "three_body_interactions=30", "--three-body-gate-bias", "0"])
    assert res.exit_code == 0, res.output
    gate = json.loads((tmp_path / "gate" / "model_card.json").read_text())["settings"]
    assert gate["lr_multipliers"] == [["three_body_interactions", 30.0]] and gate["three_body_gate_bias"] == 0.0
    res = runner.invoke(app, [*base_args, "--keep", "last"])
    assert res.exit_code == 0, res.output
    last = json.loads((out / "model" / "model_card.json").read_text())
    assert last["settings"]["keep"] == "last" and last["kept_epoch"] == last["epochs_run"] - 1 == 0
    hist = json.loads((out / "history.json").read_text())
    assert len(hist) == 1 and last["train_seconds"] >= hist[-1]["seconds"] > 0  # the training's time, not 0


def test_unknown_elements_are_refused(dataset, tmp_path):
    from ase import Atoms

    from tdphonon.errors import UnsupportedElementsError
    from tdphonon.finetune.train import fine_tune

    a = Atoms("EsCl", positions=[[0, 0, 0], [2.5, 2.5, 2.5]], cell=np.eye(3) * 5.0, pbc=True)
    a.arrays["forces"] = np.zeros((2, 3))
    a.info["label"] = "EsCl"
    with pytest.raises(UnsupportedElementsError, match="Es"):
        fine_tune(M3GNET_DIR, [a], [], tmp_path / "x")


def test_evaluate_reports_before_after_and_residuals(tmp_path):
    from tdphonon.cli import app

    out = tmp_path / "eval.json"
    paths = [str(REFERENCE / "phonopy" / "test" / s) for s in SOURCES[:2]]
    res = runner.invoke(app, ["finetune", "evaluate", *paths, "--base", str(M3GNET_DIR), "--model", "chgnet",
                              "--held-out", "phonopy_params_Si", "--out", str(out)])
    assert res.exit_code == 0, res.output
    r = json.loads(out.read_text())
    assert r["heldout"] == ["phonopy_params_Si"] and r["train"] == ["phonopy_params_NaCl-fd"]
    for m in r["models"].values():
        assert m["mae_thz_heldout"] > 0 and m["mae_thz_train"] > 0
    # finite-displacement DFT data are harmonic to a few per cent
    assert 0 < r["residuals"]["phonopy_params_NaCl-fd"] < 0.05
    assert out.with_suffix(".png").stat().st_size > 5000


def test_finetune_maker_flow(tmp_path):
    from jobflow import JobStore, run_locally
    from maggma.stores import MemoryStore

    from tdphonon.finetune.flows import FineTuneMaker

    maker = FineTuneMaker(base_model=str(M3GNET_DIR), dataset_settings={"n_random": 2, "val_fraction": 0.0,
                                                                         "held_out": ["phonopy_params_Si"]},
                          train_settings={"epochs": 1, "device": "cpu"}, model_name="flow-test")
    flow = maker.make([REFERENCE / "phonopy" / "test" / s for s in SOURCES[:2]], tmp_path)
    assert [j.config.manager_config.get("_category") for j in flow.jobs] == ["tdphonon-cpu", "tdphonon-gpu",
                                                                            "tdphonon-cpu"]
    # the training job gets the sources, which phonon-MAE selection reads the validation sets from
    assert flow.jobs[1].function_args[-1] == [str(REFERENCE / "phonopy" / "test" / s) for s in SOURCES[:2]]
    store = JobStore(MemoryStore())
    out = run_locally(flow, store=store, ensure_success=True, log=False)
    ev = out[flow.jobs[-1].uuid][1].output
    assert ev["heldout"] == ["phonopy_params_Si"]
    assert ev["after"]["model"]["name"] == "flow-test" and ev["before"]["mae_thz_train"] > 0
    assert (tmp_path / "train" / "model" / "model_card.json").exists()
