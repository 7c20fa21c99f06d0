"""The recipe options (tdphonon.finetune.recipe) shared by workflows/finetune_recipe.py and benchmarks/finetune.py."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REFERENCE, requires_reference
from tdphonon.finetune.recipe import (
    add_recipe_options,
    dataset_settings,
    finetune_settings,
    prepare_dataset,
    split_labels,
)

ROOT = Path(__file__).resolve().parents[1]


def parse(argv, **defaults):
    ap = argparse.ArgumentParser()
    add_recipe_options(ap, **defaults)
    return ap.parse_args(argv)


def test_options_become_settings():
    args = parse(["--n-modes", "10", "--n-modes-unstable", "30", "--thermal-temperatures", "300", "600",
                  "--n-thermal", "4", "--thermal-labels", "base_anharmonic", "--select", "phonon_mae",
                  "--keep", "last", "--max-hours", "0.5"], epochs=16, patience=0, device="cpu")
    ds = dataset_settings(args, held_out=("MgO", "ZnO"))
    assert (ds.n_modes, ds.n_modes_unstable, ds.n_thermal) == (10, 30, 4)
    assert ds.temperatures == (300.0, 600.0) and ds.thermal_labels == "base_anharmonic"
    assert ds.held_out == ("MgO", "ZnO") and ds.include_raw and ds.max_raw_per_set == 40
    ft = finetune_settings(args)
    assert (ft.epochs, ft.patience, ft.device, ft.selection, ft.keep) == (16, 0, "cpu", "phonon_mae", "last")
    assert ft.max_seconds == pytest.approx(1800.0)
    # the recipe's defaults (those the shipped model's recipe_argv leaves out)
    d = parse([])
    assert (d.epochs, d.patience, d.device, d.select, d.keep, d.max_raw) == (150, 20, None, "force_mae", "best", 40)
    assert finetune_settings(d).max_seconds is None
    assert not dataset_settings(parse(["--max-raw", "0"])).include_raw
    assert dataset_settings(d).replay == ()
    rp = dataset_settings(parse(["--replay", "elements", "extra.cif", "--n-replay", "5"]))
    assert rp.replay == ("elements", "extra.cif") and rp.n_replay == 5
    assert finetune_settings(d).lr_multipliers == ()
    lm = finetune_settings(parse(["--lr-mult", "three_body_interactions=30", "graph_layers.0=0"]))
    assert lm.lr_multipliers == (("three_body_interactions", 30.0), ("graph_layers.0", 0.0))
    assert finetune_settings(d).three_body_gate_bias is None
    assert finetune_settings(parse(["--three-body-gate-bias", "0"])).three_body_gate_bias == 0.0


def test_unknown_choices_are_refused(capsys):
    for argv in (["--keep", "first"], ["--select", "energy"], ["--thermal-labels", "dft"]):
        with pytest.raises(SystemExit):
            parse(argv)
        assert "invalid choice" in capsys.readouterr().err
    for bad in ("three_body_interactions", "three_body_interactions=fast", "=3"):
        with pytest.raises(SystemExit):
            parse(["--lr-mult", bad])
        assert "PREFIX=FACTOR" in capsys.readouterr().err


@pytest.mark.parametrize("script", ["workflows/finetune_recipe.py", "benchmarks/finetune.py"])
def test_both_scripts_take_the_recipe_options(script):
    out = subprocess.run([sys.executable, str(ROOT / script), "--help"], capture_output=True, text=True,
                         timeout=120, check=True).stdout
    for opt in ("--n-modes-unstable", "--thermal-temperatures", "--thermal-labels", "--keep", "--select",
                "--raw-kinds", "--replay", "--n-replay", "--lr-mult", "--three-body-gate-bias",
                "--work", "--out"):
        assert opt in out, (script, opt)
    assert ("--heldout" in out) == (script == "benchmarks/finetune.py")


@requires_reference
def test_prepare_dataset_reuses_only_the_same_settings(tmp_path):
    from tdphonon.finetune.flows import read_sources

    rep = read_sources([str(REFERENCE / "phonopy" / "test" / s)
                        for s in ("phonopy_params_Si.yaml", "phonopy_params_NaCl-fd.yaml.xz")])
    entries = list(rep.entries)
    st = dataset_settings(parse(["--n-random", "2", "--max-raw", "0"]), held_out=("phonopy_params_Si",))
    man = prepare_dataset(entries, st, tmp_path / "ds", base_model="")
    assert not man.get("reused") and man["splits"]["test"]["n_structures"] == 2
    assert man["splits"]["test"]["compounds"] == [c for c, v in man["compounds"].items()
                                                  if v["labels"] == ["phonopy_params_Si"]]
    assert split_labels(man, "test") == ["phonopy_params_Si"] and split_labels(man, "val") == []
    again = prepare_dataset(entries, st, tmp_path / "ds", base_model="")
    assert again["reused"] and again["created"] == man["created"]
    st3 = dataset_settings(parse(["--n-random", "3", "--max-raw", "0"]), held_out=("phonopy_params_Si",))
    third = prepare_dataset(entries, st3, tmp_path / "ds", base_model="")
    assert not third.get("reused") and third["splits"]["test"]["n_structures"] == 3
    # base-anharmonic thermal labels need the base model: a clear error, nothing written over
    st4 = dataset_settings(parse(["--thermal-temperatures", "300", "--thermal-labels", "base_anharmonic"]))
    with pytest.raises(ValueError, match="needs the base model"):
        prepare_dataset(entries, st4, tmp_path / "ds", base_model="")
    assert prepare_dataset(entries, st3, tmp_path / "ds", base_model="")["reused"]
