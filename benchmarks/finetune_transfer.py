#!/usr/bin/env python
"""Benchmark: where the held-out accuracy of the fine-tuned M3GNet is lost (not a test).

Takes the model that ``benchmarks/finetune.py`` trained (its ``work_dir``; the sha256 is checked
against ``benchmarks/results/finetune.json``) and measures, with the same DFT sets, split and metric
(harmonic frequency MAE, THz, commensurate q of each DFT supercell):

* a weight-space interpolation sweep θ = θ_base + α (θ_ft − θ_base) (WiSE-FT,
  :func:`tdphonon.finetune.train.interpolate_weights`) on held-out, validation and training compounds;
  α is *selected on the validation compounds* (the held-out ones are only reported);
* module-wise swaps (fine-tuned weights with one part of the network reset to the base, or only the
  read-out fine-tuned) on held-out and validation compounds (with ``--srtio3`` also on the training
  compounds): which part of the network carries a compound's gain or loss.

With ``--srtio3`` each α also runs the SrTiO3 validation case (one-shot and self-consistent TDPH on the
DFT cell, the settings and columns of ``benchmarks/validation_SrTiO3.py``): how much of the base model's
anharmonicity (the R soft mode's hardening with T) survives along the fine-tuning direction.
``--result`` takes the model and split of another ``benchmarks/finetune.py`` result (e.g. the held-out
run of the shipped recipe, ``finetune_heldout_shipped.json``).

Writes ``benchmarks/results/finetune_transfer.json`` (for another ``--result``: ``<its stem>_transfer.json``).

    python benchmarks/finetune_transfer.py [--work out/ftbench] [--alphas 0 0.25 ... 1.5]
    python benchmarks/finetune_transfer.py --result benchmarks/results/finetune_heldout_shipped.json \
        --alphas 0 0.25 0.5 0.75 1 --srtio3 --no-swaps
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
    """The numbers of one variant. ``mae_thz_train`` is ``evaluate_models``' mean over every compound
    evaluated that is not held out: here the training *and* validation sets (``per_compound`` has each)."""
    per = {n: v.get("mae_thz") for n, v in m["materials"].items() if "error" not in v}
    vals = [per[n] for n in val if n in per]
    return {"mae_thz_heldout": m["mae_thz_heldout"], "mae_thz_train": m["mae_thz_train"],
            "mae_thz_val": sum(vals) / len(vals) if vals else None, "per_compound": per,
            "sha256": m["model"]["sha256"]}


def _srtio3(model_dir: Path, n_configurations: int) -> dict:
    """R soft mode and Γ-TO1 (THz; harmonic, one-shot and self-consistent at 100/300/600 K) of SrTiO3 on the
    DFT cell, as the ML columns of ``validation_SrTiO3.json``. A run that fails on outlier configurations is
    kept as ``tdph_failed`` (the error), and its values are those of a rerun with the outliers dropped."""
    import validation_SrTiO3 as v

    from tdphonon.potentials import load_potential

    cols, failure, diagnosis = v.dft_cell_columns(load_potential(str(model_dir), device="cpu"), n_configurations)
    cols = cols or diagnosis
    if "failed" in cols:
        print(f"  SrTiO3 TDPH failed, also with outliers dropped: {cols['failed']}", flush=True)
        return {"tdph_failed": failure, "outliers_dropped_failed": cols["failed"]}
    sc = cols["self_consistent"]
    out = {**({"tdph_failed": failure, "values_with_outliers_dropped": True,
               "outliers_dropped": sc["outliers_dropped"]} if failure else {}),
           "r_soft_thz": sc["r_soft_thz"], "gamma_to1_thz": sc["gamma_to1_thz"],
           "r_soft_thz_one_shot": cols["one_shot"]["r_soft_thz"],
           **{k: sc[k] for k in ("converged_300K", "imaginary_fixed_point_300K", "seconds", "settings_digest")},
           "residual_thz_last": {t: h[-1]["residual_thz"] for t, h in sc["draws"].items()}}
    print(f"  SrTiO3 R: harmonic {out['r_soft_thz']['harmonic']:.2f}, "
          + ", ".join(f"{t} {out['r_soft_thz'][t]:.2f}" for t in ("100K", "300K", "600K")) + " THz", flush=True)
    return out


def _srtio3_reference() -> dict:
    """R soft mode (THz) of DFT (harmonic; SCPH on the same 2x2x2 q-points and policy) and of the comparison
    models, from ``validation_SrTiO3.json``."""
    val = json.loads((ROOT / "benchmarks" / "results" / "validation_SrTiO3.json").read_text())
    return {"dft_scph_2x2x2_r_soft_thz": val["engine_check"]["scph_commensurate"]["r_soft_thz"],
            **{f"{name}_r_soft_thz": col["self_consistent"]["r_soft_thz"]
               for name, col in val["ml_comparison"].items()},
            "settings": "benchmarks/validation_SrTiO3.py (force_fit, self-consistent, |ν| ≥ 1.5 THz, 2x2x2 DFT cell)"}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default=None, help="work dir of benchmarks/finetune.py (default: its JSON's)")
    ap.add_argument("--alphas", type=float, nargs="+", default=[0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5])
    ap.add_argument("--max-atoms", type=int, default=200)
    ap.add_argument("--result", default=str(FINETUNE_JSON),
                    help="benchmarks/finetune.py result whose model and split are used (default: finetune.json)")
    ap.add_argument("--srtio3", action="store_true",
                    help="per α also the SrTiO3 TDPH columns of benchmarks/validation_SrTiO3.py (R soft mode vs T)")
    ap.add_argument("--n-configurations", type=int, default=32, help="TDPH configurations (--srtio3)")
    ap.add_argument("--no-swaps", action="store_true", help="skip the module-wise swaps")
    ap.add_argument("--out", default=None, help="output JSON (default: see above)")
    args = ap.parse_args(argv)
    result_path = Path(args.result)
    out_path = Path(args.out) if args.out else (
        OUT if result_path.resolve() == FINETUNE_JSON.resolve() else OUT.with_name(f"{result_path.stem}_transfer.json"))
    import warnings

    warnings.filterwarnings("ignore")
    from tdphonon.finetune.evaluate import evaluate_models
    from tdphonon.finetune.flows import _as_reference
    from tdphonon.finetune.sources import read_reference_collection
    from tdphonon.finetune.train import interpolate_weights
    from tdphonon.potentials import hardware_info, package_versions, sha256_dir

    ft = json.loads(result_path.read_text())
    work = Path(args.work or ROOT / ft["work_dir"])
    model = work / "train" / "model"
    digest, _ = sha256_dir(model)
    if digest != ft["finetuned_model"]["sha256"]:
        raise SystemExit(f"{model} (sha256 {digest[:16]}…) is not the model of {result_path.name} "
                         f"({ft['finetuned_model']['sha256'][:16]}…): rerun benchmarks/finetune.py --work {work}")
    base = str(SHARED / "models" / "M3GNet-MP-2021.2.8-PES")
    held, val, train = ft["heldout_compounds"], ft["val_sets"], ft["train_sets"]
    rep = read_reference_collection(SHARED / "reference", skip_larger_than=args.max_atoms)
    refs = {e.label: _as_reference(e) for e in rep.entries if e.label in set(held) | set(val) | set(train)}
    tmp = work / "transfer"
    result: dict = {"description": __doc__.strip().splitlines()[0], "result": result_path.name,
                    "finetuned_model": ft["finetuned_model"],
                    "base_model": ft["base_model"]["name"], "heldout_compounds": held, "val_compounds": val,
                    "n_train_sets": len(train), "metric": "harmonic frequency MAE (THz), commensurate q of "
                    "each DFT supercell, acoustic Γ excluded (as benchmarks/finetune.py)"}
    t0 = time.perf_counter()
    sweep = {}
    for a in args.alphas:
        d = interpolate_weights(base, model, tmp / f"alpha_{a:g}", alpha=a)
        ev = evaluate_models({"m": str(d)}, list(refs.values()), held)
        sweep[f"{a:g}"] = {"alpha": a, **_summary(ev["models"]["m"], val)}
        if args.srtio3:
            sweep[f"{a:g}"]["srtio3"] = _srtio3(d, args.n_configurations)
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
    if args.srtio3:
        result["srtio3"] = _srtio3_reference()
    # with --srtio3 the swaps are also judged on the training sets: what each part costs or keeps
    sub = list(refs.values()) if args.srtio3 else [refs[n] for n in held + val if n in refs]
    swaps = {}
    for name, kw in ({} if args.no_swaps else SWAPS).items():
        d = interpolate_weights(base, model, tmp / name, alpha=1.0, **kw)
        ev = evaluate_models({"m": str(d)}, sub, held)
        swaps[name] = {**kw, **{k: v for k, v in _summary(ev["models"]["m"], val).items()
                                if k != "mae_thz_train" or args.srtio3}}
        if args.srtio3:
            swaps[name]["srtio3"] = _srtio3(d, args.n_configurations)
        print(f"{name}: held-out {swaps[name]['mae_thz_heldout']:.3f}, val {swaps[name]['mae_thz_val']:.3f}",
              flush=True)
    if swaps:
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
    out_path.write_text(json.dumps(result, indent=1, default=str))
    print(json.dumps(result["interpolation"]["selected"]), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
