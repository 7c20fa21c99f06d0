#!/usr/bin/env python
"""Benchmark: where the held-out accuracy of the fine-tuned M3GNet is lost (not a test).

Takes the model that ``benchmarks/finetune.py`` trained (its ``work_dir``; the sha256 is checked
against ``benchmarks/results/finetune.json``) and measures, with the same DFT sets, split and metric
(harmonic frequency MAE, THz, commensurate q of each DFT supercell):

* a weight-space interpolation sweep θ = θ_base + α (θ_ft − θ_base) (WiSE-FT,
  :func:`tdphonon.finetune.train.interpolate_weights`) on held-out, validation and training compounds;
  α is *selected on the validation compounds* (the held-out ones are only reported);
* module-wise swaps (fine-tuned weights with one part of the network reset to the base, or only the
  read-out fine-tuned) on held-out and validation compounds: which part of the network carries a
  compound's gain or loss.

Writes ``benchmarks/results/finetune_transfer.json``.

    python benchmarks/finetune_transfer.py [--work out/ftbench] [--alphas 0 0.25 ... 1.5]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("TDPHONON_SHARED", ROOT.parent / "shared"))
FINETUNE_JSON = ROOT / "benchmarks" / "results" / "finetune.json"
OUT = ROOT / "benchmarks" / "results" / "finetune_transfer.json"
#: state-dict prefixes of matgl's M3GNet (embedding, 3 three-body + graph blocks, gated read-out)
_READOUT = ("model.final_layer", "element_refs", "data_mean", "data_std")
SWAPS = {
    "base_embedding": {"keep_base": ("model.embedding",)},
    "base_embedding_and_three_body": {"keep_base": ("model.embedding", "model.three_body_interactions")},
    "finetuned_last_block_and_readout": {"keep_base": ("model.embedding", "model.three_body_interactions.0",
                                                       "model.three_body_interactions.1", "model.graph_layers.0",
                                                       "model.graph_layers.1")},
    "finetuned_readout_only": {"keep_base": ("model.embedding", "model.three_body_interactions",
                                             "model.graph_layers")},
}


def _summary(m: dict, val: list[str]) -> dict:
    per = {n: v.get("mae_thz") for n, v in m["materials"].items() if "error" not in v}
    vals = [per[n] for n in val if n in per]
    return {"mae_thz_heldout": m["mae_thz_heldout"], "mae_thz_train": m["mae_thz_train"],
            "mae_thz_val": sum(vals) / len(vals) if vals else None, "per_compound": per,
            "sha256": m["model"]["sha256"]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default=None, help="work dir of benchmarks/finetune.py (default: its JSON's)")
    ap.add_argument("--alphas", type=float, nargs="+", default=[0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5])
    ap.add_argument("--max-atoms", type=int, default=200)
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args(argv)
    import warnings

    warnings.filterwarnings("ignore")
    from tdphonon.finetune.evaluate import evaluate_models
    from tdphonon.finetune.flows import _as_reference
    from tdphonon.finetune.sources import read_reference_collection
    from tdphonon.finetune.train import interpolate_weights
    from tdphonon.potentials import hardware_info, package_versions, sha256_dir

    ft = json.loads(FINETUNE_JSON.read_text())
    work = Path(args.work or ROOT / ft["work_dir"])
    model = work / "train" / "model"
    digest, _ = sha256_dir(model)
    if digest != ft["finetuned_model"]["sha256"]:
        raise SystemExit(f"{model} (sha256 {digest[:16]}…) is not the model of {FINETUNE_JSON.name} "
                         f"({ft['finetuned_model']['sha256'][:16]}…): rerun benchmarks/finetune.py --work {work}")
    base = str(SHARED / "models" / "M3GNet-MP-2021.2.8-PES")
    held, val, train = ft["heldout_compounds"], ft["val_sets"], ft["train_sets"]
    rep = read_reference_collection(SHARED / "reference", skip_larger_than=args.max_atoms)
    refs = {e.label: _as_reference(e) for e in rep.entries if e.label in set(held) | set(val) | set(train)}
    tmp = work / "transfer"
    result: dict = {"description": __doc__.strip().splitlines()[0], "finetuned_model": ft["finetuned_model"],
                    "base_model": ft["base_model"]["name"], "heldout_compounds": held, "val_compounds": val,
                    "n_train_sets": len(train), "metric": "harmonic frequency MAE (THz), commensurate q of "
                    "each DFT supercell, acoustic Γ excluded (as benchmarks/finetune.py)"}
    t0 = time.perf_counter()
    sweep = {}
    for a in args.alphas:
        d = interpolate_weights(base, model, tmp / f"alpha_{a:g}", alpha=a)
        ev = evaluate_models({"m": str(d)}, list(refs.values()), held)
        sweep[f"{a:g}"] = {"alpha": a, **_summary(ev["models"]["m"], val)}
        print(f"alpha {a:g}: held-out {sweep[f'{a:g}']['mae_thz_heldout']:.3f}, val "
              f"{sweep[f'{a:g}']['mae_thz_val']:.3f}, train {sweep[f'{a:g}']['mae_thz_train']:.3f} THz", flush=True)
    before = sweep.get("0") or _summary(evaluate_models({"m": base}, list(refs.values()), held)["models"]["m"], val)
    best = min(sweep.values(), key=lambda r: r["mae_thz_val"])
    result["interpolation"] = {
        "formula": "theta = theta_base + alpha * (theta_finetuned - theta_base)", "sweep": sweep,
        "selected_on": "validation compounds (lowest mean MAE)", "selected_alpha": best["alpha"],
        "selected": {k: best[k] for k in ("mae_thz_heldout", "mae_thz_val", "mae_thz_train")},
        "improvement_heldout_selected": before["mae_thz_heldout"] / best["mae_thz_heldout"],
        "improvement_train_selected": before["mae_thz_train"] / best["mae_thz_train"],
        "best_heldout_over_sweep_not_selectable": min(r["mae_thz_heldout"] for r in sweep.values()),
    }
    sub = [refs[n] for n in held + val if n in refs]
    swaps = {}
    for name, kw in SWAPS.items():
        d = interpolate_weights(base, model, tmp / name, alpha=1.0, **kw)
        ev = evaluate_models({"m": str(d)}, sub, held)
        swaps[name] = {**kw, **{k: v for k, v in _summary(ev["models"]["m"], val).items() if k != "mae_thz_train"}}
        print(f"{name}: held-out {swaps[name]['mae_thz_heldout']:.3f}, val {swaps[name]['mae_thz_val']:.3f}",
              flush=True)
    result["module_swaps"] = swaps
    ratios = {n: before["per_compound"][n] / sweep["1"]["per_compound"][n] for n in held} if "1" in sweep else {}
    result["per_heldout_improvement_alpha1"] = ratios
    if ratios:
        rest = [n for n in held if ratios[n] >= 1.0]
        result["heldout_without_degraded"] = {
            "degraded": [n for n in held if ratios[n] < 1.0], "compounds": rest,
            "improvement": (sum(before["per_compound"][n] for n in rest)
                            / sum(sweep["1"]["per_compound"][n] for n in rest)) if rest else None}
    result.update(seconds=time.perf_counter() - t0, packages=package_versions(), hardware=hardware_info("cpu"),
                  date=time.strftime("%Y-%m-%d"))
    Path(args.out).write_text(json.dumps(result, indent=1, default=str))
    print(json.dumps(result["interpolation"]["selected"]), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
