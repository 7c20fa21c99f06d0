#!/usr/bin/env python
"""Benchmark: ML harmonic phonons vs every DFT force-constant set in ../shared/reference.

For each reference set phonopy (or phono3py, fc2 part) can load, and each offline model (universal
M3GNet from ../shared/models, CHGNet 0.3.0, SevenNet-0), the ML force constants are computed by
finite displacements (0.01 Å) on the *DFT* unit cell and supercell (no relaxation), and the
frequencies are compared on the q-points commensurate with that supercell (exact for both),
acoustic Γ modes excluded, NAC off on both sides. Also F, S, Cv at 300 K (30 Å mesh) and wall time.

Writes benchmarks/results/harmonic_accuracy.json and harmonic_accuracy_parity.png.
This is the baseline the fine-tuning issue must beat. Not a test.

    python benchmarks/harmonic_accuracy.py [--models m3gnet chgnet sevennet] [--only NAME ...]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
import warnings
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
warnings.filterwarnings("ignore")

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("TDPHONON_SHARED", ROOT.parent / "shared"))
OUT = ROOT / "benchmarks" / "results"

MODELS = {
    "M3GNet-MP-2021.2.8-PES": str(SHARED / "models" / "M3GNet-MP-2021.2.8-PES"),
    "CHGNet-0.3.0": "chgnet",
    "SevenNet-0": "sevennet-0",
}

#: exchange-correlation functional per set, as stated in ../shared/reference/README.md
FUNCTIONAL = {
    "MgO": "PBE",
    "Al2O3": "PBEsol",
    "CaTiO3": "PBE",
    "MgB2": "PBE",
    "SiO2-HP": "PBE",
    "ZnO": "PBE",
    "Cr": "PBEsol (bcc AFM: magnetic, MLIPs are non-magnetic)",
    "phonopy_params_Si": "PBE",
    "phonopy_params_NaCl-fd": "PBE",
    "phonopy_params_NaCl-rd": "PBE",
    "phonopy_disp_SnO2": "PBEsol",
}


def functional(name: str) -> str:
    if name in FUNCTIONAL:
        return FUNCTIONAL[name]
    if "phono3py" in name or name.startswith("AlN-rd"):
        return "PBEsol"
    return "not recorded"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="*", default=list(MODELS))
    ap.add_argument("--only", nargs="*", default=None, help="reference names to include")
    ap.add_argument("--out", default=str(OUT / "harmonic_accuracy.json"))
    ap.add_argument("--fresh", action="store_true", help="ignore per-material results already in --out")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    # checkpoint: per-material results are written after every material and reused on restart
    previous = {} if args.fresh or not out.exists() else json.loads(out.read_text()).get("models", {})
    if not (SHARED / "reference").is_dir():
        print(f"reference data not found at {SHARED / 'reference'}", file=sys.stderr)
        return 1

    from tdphonon.evaluation import compare_with_reference, iter_reference_sets
    from tdphonon.potentials import load_potential

    refs = []
    skipped = {}
    for name, loader in iter_reference_sets(SHARED / "reference"):
        if args.only and name not in args.only:
            continue
        try:
            refs.append((name, loader()))
        except Exception as exc:  # reported, never silently included
            skipped[name] = f"{type(exc).__name__}: {exc}"
    print(f"{len(refs)} reference sets loaded, {len(skipped)} skipped", flush=True)

    results: dict = {"description": __doc__.strip().splitlines()[0], "models": {}, "skipped_references": skipped}
    results["models"].update(previous)
    for mname in args.models:
        key = next(k for k in MODELS if k == mname or mname.lower() in k.lower())
        pot = load_potential(MODELS[key], device="cpu")
        per = dict(previous.get(key, {}).get("materials", {}))
        for name, ref in refs:
            if name in per and "error" not in per[name]:
                continue
            try:
                pot.check_elements(list(ref.phonon.unitcell.symbols), name)
                c = compare_with_reference(ref, pot)
            except Exception as exc:
                per[name] = {"error": f"{type(exc).__name__}: {exc}"}
                traceback.print_exc(limit=1)
                continue
            d = c.to_dict()
            for k in ("frequencies_ml", "frequencies_dft"):  # per-mode lists: 1e-4 THz is plenty
                d[k] = [round(x, 4) for x in d[k]]
            d.update(functional=functional(name), n_materials=1, seconds_per_material=c.seconds)
            per[name] = d
            print(
                f"{key:24s} {name:40s} {len(ref.phonon.supercell):4d} at  MAE {c.mae_thz:6.3f} THz {c.seconds:6.1f} s",
                flush=True,
            )
            results["models"][key] = summarize(pot, MODELS[key], per)
            finish(results, out, plot=False)
        results["models"][key] = summarize(pot, MODELS[key], per)
    finish(results, out, plot=True)
    for k, v in results["models"].items():
        print(
            f"{k}: MAE {v['mae_thz']:.3f} THz over {v['n_materials']} materials, "
            f"{v['seconds_per_material']:.2f} s/material"
        )
    return 0


def summarize(pot, spec: str, per: dict) -> dict:
    from tdphonon.potentials import LOAD_SECONDS

    ok = {k: v for k, v in per.items() if "error" not in v}
    all_err = (
        np.concatenate([np.abs(np.array(v["frequencies_ml"]) - np.array(v["frequencies_dft"])) for v in ok.values()])
        if ok
        else np.zeros(0)
    )
    return {
        "model": pot.identity.to_dict(),
        "load_seconds": LOAD_SECONDS.get((spec, "cpu")),
        "n_materials": len(ok),
        "mae_thz": float(np.mean([v["mae_thz"] for v in ok.values()])) if ok else None,
        "mae_thz_all_modes": float(all_err.mean()) if all_err.size else None,
        "median_material_mae_thz": float(np.median([v["mae_thz"] for v in ok.values()])) if ok else None,
        "seconds_per_material": float(np.mean([v["seconds"] for v in ok.values()])) if ok else None,
        "materials": per,
    }


def finish(results: dict, out: Path, plot: bool) -> None:
    from _common import write_result

    results["method"] = {
        "displacement_A": 0.01,
        "structure": "DFT unit cell, no relaxation",
        "supercell": "DFT supercell",
        "qpoints": "commensurate with the DFT supercell; 3 acoustic Γ modes excluded",
        "nac": False,
        "thermal": "phonopy mesh 30 Å, 300 K; F in kJ/mol, S and Cv in J/K/mol (primitive cell)",
        "frequencies": "per-mode lists rounded to 1e-4 THz (per-material errors computed before rounding)",
        "note": "functionals differ between sets (see 'functional'); the overall MAE mixes PBE, PBEsol and "
        "unrecorded sets",
    }
    write_result(results, out, compact=True)
    if plot:
        parity(results, out.with_name(out.stem + "_parity.png"))


def parity(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = results["models"]
    fig, axes = plt.subplots(1, len(models), figsize=(4.2 * len(models), 4.2), squeeze=False)
    for ax, (name, m) in zip(axes[0], models.items(), strict=True):
        x, y = [], []
        for v in m["materials"].values():
            if "error" not in v:
                x += v["frequencies_dft"]
                y += v["frequencies_ml"]
        lim = [min(x + y + [0]) - 0.5, max(x + y) + 0.5]
        ax.plot(lim, lim, "k--", lw=0.7)
        ax.scatter(x, y, s=3, alpha=0.4)
        ax.set_xlim(lim)
        ax.set_ylim(lim)
        ax.set_title(f"{name}\nMAE {m['mae_thz']:.2f} THz ({m['n_materials']} materials)", fontsize=9)
        ax.set_xlabel("DFT frequency (THz)")
        ax.set_ylabel("ML frequency (THz)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    sys.exit(main())
