#!/usr/bin/env python
"""Benchmark: fine-tuning the universal M3GNet on the shared DFT harmonic sets (not a test).

Base: M3GNet-MP-2021.2.8-PES from ../shared/models. Data: every set of ../shared/reference that
tdphonon reads (supercells up to --max-atoms), F = −Φu on --n-random random-displacement
configurations per set (0.01–0.05 Å, the paper's recipe), plus up to --max-raw raw DFT
random-displacement configurations per set as they are (the shipped model's recipe,
workflows/finetune_recipe.py; --max-raw 0 for the pure F = −Φu data). Held out by compound: --heldout (at least
5 compounds of different chemistry). Reports the harmonic frequency MAE (THz, commensurate q of the
DFT supercell, acoustic Γ excluded) before/after on held-out and on training compounds, wall time,
device. Writes benchmarks/results/finetune.json (+ finetune_parity.png).

    python benchmarks/finetune.py [--epochs 16] [--max-raw 40] [--max-hours H] [--device cpu]
                                  [--n-modes N] [--select force_mae|phonon_mae] [--work DIR] ...

The data and training options are the recipe's own (:mod:`tdphonon.finetune.recipe`, shared with
workflows/finetune_recipe.py), so the held-out accuracy of any recipe is measured by passing the
``recipe.argv`` of its model card, e.g. ``--n-modes 10 --n-modes-unstable 30 --thermal-temperatures 300
--n-thermal 4 --thermal-labels base_anharmonic --keep last``. Defaults that differ from the recipe:
``--epochs 16``, ``--patience 0``, ``--device cpu``. With ``--work`` an interrupted run resumes.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("TDPHONON_SHARED", ROOT.parent / "shared"))
OUT = ROOT / "benchmarks" / "results" / "finetune.json"
#: different chemistry: elemental covalent, rocksalt oxide, wurtzite oxide, nitride, rutile oxide
HELDOUT = ["phonopy_params_Si", "MgO", "ZnO", "phonopy_params_Zr3N4", "phonopy_disp_SnO2"]


def compound_summary(manifest: dict, per_material: dict) -> dict:
    """Compound counts per split and the training-compound MAE averaged per compound (a compound with several
    DFT sets — NaCl 4, SrTiO3 2 — counts once; the ``mae_thz_*_train`` fields average over sets)."""
    comps = manifest.get("compounds", {})
    out: dict = {f"n_{split}_compounds": sum(c["split"] == split for c in comps.values())
                 for split in ("train", "val", "test")}
    for key, mae in per_material.items():
        vals = [np.mean([mae[lab] for lab in c["labels"]]) for c in comps.values()
                if c["split"] == "train" and all(isinstance(mae.get(lab), float) for lab in c["labels"])]
        out[f"mae_thz_{key}_train_per_compound"] = float(np.mean(vals)) if vals else None
    return out


HARMONIC_ACCURACY = OUT.with_name("harmonic_accuracy.json")


def universal_models_on(labels: list[str], path: Path = HARMONIC_ACCURACY) -> dict | None:
    """The universal models' MAE on the given sets, from ``harmonic_accuracy.json`` (same function and metric:
    :func:`tdphonon.evaluation.compare_with_reference`), or None when that file is absent. The bar a fine-tuned
    model has to clear before it can be the default for materials it was not trained on."""
    if not path.exists():
        return None
    ha = json.loads(path.read_text())
    out: dict = {"source": f"benchmarks/results/{path.name} ({ha.get('date')})"}
    for name, m in ha["models"].items():
        per = {lab: m["materials"][lab]["mae_thz"] for lab in labels if "mae_thz" in m["materials"].get(lab, {})}
        out[name] = {"per_set": per, "mae_thz": float(np.mean(list(per.values()))) if len(per) == len(labels)
                     else None}
    return out


def main(argv=None) -> int:
    from tdphonon.finetune.recipe import (  # light: no torch
        add_recipe_options,
        dataset_settings,
        finetune_settings,
        prepare_dataset,
        split_labels,
    )

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_recipe_options(ap, epochs=16, patience=0, device="cpu")
    ap.add_argument("--heldout", nargs="*", default=HELDOUT)
    ap.add_argument("--work", default=None,
                    help="folder for the data set and model (default: a temp dir); the same --work and arguments "
                         "resume an interrupted run (checkpoints) or re-export a finished one (--keep)")
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args(argv)
    import warnings

    warnings.filterwarnings("ignore")
    from tdphonon.finetune.evaluate import evaluate_models, parity_plot
    from tdphonon.finetune.flows import _as_reference, train
    from tdphonon.finetune.sources import read_reference_collection
    from tdphonon.potentials import hardware_info, package_versions

    base = str(SHARED / "models" / "M3GNet-MP-2021.2.8-PES")
    work = Path(args.work or tempfile.mkdtemp(prefix="tdphonon-finetune-"))
    t0 = time.perf_counter()
    rep = read_reference_collection(SHARED / "reference", skip_larger_than=args.max_atoms)
    t_read = time.perf_counter() - t0
    print(f"{len(rep.entries)} sets read, {len(rep.skipped)} skipped ({t_read:.0f} s)", flush=True)
    st = dataset_settings(args, held_out=tuple(args.heldout))
    man = prepare_dataset(list(rep.entries) + list(rep.skipped), st, work / "dataset", base, args.device)
    print("dataset:", {k: v["n_structures"] for k, v in man["splits"].items()},
          "(reused)" if man.get("reused") else "", flush=True)
    card = train(work / "dataset", base, work / "train", finetune_settings(args),
                 name="M3GNet-MP-2021.2.8-PES-tdphonon-ft",
                 progress=lambda e, n, r: print(f"epoch {e}/{n} {r}", flush=True), resume=args.work is not None,
                 references=[SHARED / "reference"] if args.select == "phonon_mae" else None)
    train_seconds = card["train_seconds"]  # summed over resumed invocations
    # held out by compound, so every set of a held-out compound is held out
    test_labels, train_labels, val_labels = (split_labels(man, k) for k in ("test", "train", "val"))
    refs = [_as_reference(e) for e in rep.entries if e.label in set(test_labels) | set(train_labels)]
    t0 = time.perf_counter()
    ev = evaluate_models({"before": base, "after": str(work / "train" / "model")}, refs, test_labels,
                         device=args.device)
    eval_seconds = time.perf_counter() - t0
    b, a = ev["models"]["before"], ev["models"]["after"]
    result = {
        "description": __doc__.strip().splitlines()[0],
        "base_model": b["model"], "finetuned_model": {k: card[k] for k in ("name", "sha256")},
        "n_train_compounds": None, "n_train_sets": len(train_labels), "train_sets": train_labels,
        "val_sets": val_labels,
        "heldout_compounds": test_labels,
        "mae_thz_before_heldout": b["mae_thz_heldout"], "mae_thz_after_heldout": a["mae_thz_heldout"],
        "mae_thz_before_train": b["mae_thz_train"], "mae_thz_after_train": a["mae_thz_train"],
        "improvement_heldout": b["mae_thz_heldout"] / a["mae_thz_heldout"] if a["mae_thz_heldout"] else None,
        "improvement_train": b["mae_thz_train"] / a["mae_thz_train"] if a["mae_thz_train"] else None,
        "force_mae_ev_a": {"before": card["force_mae_before"], "after": card["force_mae_after"]},
        "selection": card.get("selection"), "val_phonon_mae_thz": card.get("val_phonon_mae_thz"),
        "train_seconds": train_seconds, "eval_seconds": eval_seconds, "read_seconds": t_read,
        "device": args.device, "epochs": card["epochs_run"], "best_epoch": card["best_epoch"],
        "epochs_planned": args.epochs, "stopped_early": card.get("stopped_early"),
        "settings": {"dataset": man.get("settings"), "train": card["settings"], "max_atoms": args.max_atoms},
        "skipped_sets": [s.to_dict() for s in rep.skipped],
        "per_material": {k: {n: (v.get("mae_thz") if "error" not in v else v["error"])
                             for n, v in m["materials"].items()} for k, m in ev["models"].items()},
        "residual_vs_error": {k: m["residual_vs_error"] for k, m in ev["models"].items()},
        "residuals": ev["residuals"],
        "history": card.get("history") or json.loads((work / "train" / "history.json").read_text()),
        "packages": package_versions(), "hardware": hardware_info(args.device), "date": time.strftime("%Y-%m-%d"),
        "work_dir": str(work),
    }
    result["universal_models_on_heldout"] = universal_models_on(test_labels)
    cs = compound_summary(man, result["per_material"])
    result["n_train_compounds"] = cs.pop("n_train_compounds")
    result["compounds"] = {**cs, "note": "mae_thz_*_train average over the training sets; *_per_compound over "
                                         "compounds (several sets of one compound averaged first)"}
    out = Path(args.out)
    out.write_text(json.dumps(result, indent=1, default=str))
    parity_plot(ev, out.with_name(out.stem + "_parity.png"))
    print(json.dumps({k: result[k] for k in ("mae_thz_before_heldout", "mae_thz_after_heldout",
                                             "mae_thz_before_train", "mae_thz_after_train", "train_seconds")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
