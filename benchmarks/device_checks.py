#!/usr/bin/env python
"""Benchmark: reproducibility of model evaluation and fine-tuning on one device (a CUDA check; not a test).

``tdphonon.potentials.deterministic_torch`` wraps every force call and every training step. On the
CPU it makes evaluation and training bitwise reproducible (``tests/test_potentials.py``,
``tests/test_finetune_train.py``); on CUDA it is untested here, because CI and the development
machine have no GPU. This script measures, on ``--device`` (CUDA when available), for the base
M3GNet:

* ``forces``: the forces of a rattled SrTiO3 supercell evaluated twice (bitwise equal?) and their
  largest difference from the CPU;
* ``hessian``: the exact (autograd) Hessian of the same cell twice, and its largest difference from
  the CPU relative to its largest element;
* ``training``: a short fine-tune (``--epochs`` epochs on the data set ``--dataset``, written by
  ``tdphonon finetune dataset``) run twice from scratch: the same per-epoch losses and the same
  model sha256?
* ``warnings``: the messages of torch's deterministic-algorithms mode (``warn_only``: ops without a
  deterministic CUDA kernel warn instead of failing), one per distinct message.

Writes ``benchmarks/results/device_checks_<device>.json``. With ``benchmarks/device_kit.py`` this
runs on a lent GPU machine in one call (see that script's docstring).

    python benchmarks/device_checks.py [--device cuda] [--model DIR] [--dataset DIR] [--epochs 2]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
SHARED = Path(os.environ.get("TDPHONON_SHARED", ROOT.parent / "shared"))


def _digest(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a, dtype=np.float64).tobytes()).hexdigest()


def _repeat_check(fn, reference: np.ndarray | None) -> dict:
    """Run ``fn`` twice: bitwise equality, the seconds of each call, and the deviation from ``reference``."""
    t0 = time.perf_counter()
    first = np.asarray(fn(), dtype=float)
    t1 = time.perf_counter()
    second = np.asarray(fn(), dtype=float)
    t2 = time.perf_counter()
    out = {"bitwise_equal": bool(np.array_equal(first, second)),
           "max_abs_difference_between_runs": float(np.max(np.abs(first - second))),
           "sha256": [_digest(first), _digest(second)], "seconds": [t1 - t0, t2 - t1]}
    if reference is not None:
        scale = float(np.max(np.abs(reference)))
        out["max_abs_difference_from_cpu"] = float(np.max(np.abs(first - reference)))
        out["max_rel_difference_from_cpu"] = out["max_abs_difference_from_cpu"] / scale if scale else None
    return out


def main(argv=None) -> int:
    from _common import write_result

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default=None, help="cpu, cuda (default: CUDA when available)")
    ap.add_argument("--model", default=str(SHARED / "models" / "M3GNet-MP-2021.2.8-PES"))
    ap.add_argument("--dataset", default=None, help="fine-tuning data set folder (none: training is skipped)")
    ap.add_argument("--supercell", type=int, default=3, help="SrTiO3 repeat for the force check (3: 135 atoms)")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    import torch
    from ase.io import read

    from tdphonon.potentials import default_device, load_potential

    device = args.device or default_device()
    res: dict = {"description": __doc__.strip().splitlines()[0], "device": device,
                 "gpu": torch.cuda.get_device_name(0) if device.startswith("cuda") else None,
                 "torch": torch.__version__}
    caught: list[str] = []
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        pot = load_potential(args.model, device=device)
        cpu = pot if device == "cpu" else load_potential(args.model, device="cpu")
        res["model"] = pot.identity.to_dict()
        big = read(ROOT / "examples" / "SrTiO3.cif") * ((args.supercell,) * 3)
        big.positions += np.random.default_rng(0).normal(scale=0.05, size=big.positions.shape)
        small = read(ROOT / "examples" / "SrTiO3.cif") * (2, 2, 2)
        small.positions += np.random.default_rng(1).normal(scale=0.03, size=small.positions.shape)
        ref_f = None if cpu is pot else cpu.forces([big])[0]
        res["forces"] = {"n_atoms": len(big), **_repeat_check(lambda: pot.forces([big])[0], ref_f)}
        print("forces", res["forces"]["bitwise_equal"], flush=True)
        ref_h = None if cpu is pot else cpu.hessians([small])[0]
        res["hessian"] = {"n_atoms": len(small), **_repeat_check(lambda: pot.hessians([small])[0], ref_h)}
        print("hessian", res["hessian"]["bitwise_equal"], flush=True)
        res["cublas_workspace_config"] = os.environ.get("CUBLAS_WORKSPACE_CONFIG")
        if args.dataset:
            from tdphonon.finetune.dataset import load_dataset
            from tdphonon.finetune.train import FineTuneSettings, fine_tune

            data = load_dataset(args.dataset)
            train = data["train"]
            val = data.get("val") or data.get("test") or train[:1]
            st = FineTuneSettings(epochs=args.epochs, lr=3e-4, batch_size=2, patience=0, device=device)
            runs = []
            with tempfile.TemporaryDirectory() as tmp:
                for k in range(2):
                    t0 = time.perf_counter()
                    r = fine_tune(args.model, train, val, Path(tmp) / f"run{k}", st, resume=False)
                    runs.append({"seconds": time.perf_counter() - t0, "sha256": r.card["sha256"],
                                 "train_mae": [h["train_mae"] for h in r.history],
                                 "val_mae": [h.get("val_mae") for h in r.history]})
            res["training"] = {"n_train": len(train), "n_val": len(val), "epochs": args.epochs, "runs": runs,
                               "same_losses": runs[0]["train_mae"] == runs[1]["train_mae"],
                               "same_model": runs[0]["sha256"] == runs[1]["sha256"]}
            print("training", res["training"]["same_losses"], res["training"]["same_model"], flush=True)
        for w in record:
            msg = f"{w.category.__name__}: {str(w.message)[:300]}"
            if msg not in caught:
                caught.append(msg)
    res["warnings"] = [m for m in caught if "determinis" in m.lower()]
    res["other_warnings"] = len(caught) - len(res["warnings"])
    checks = [res["forces"]["bitwise_equal"], res["hessian"]["bitwise_equal"]]
    if "training" in res:
        checks += [res["training"]["same_losses"], res["training"]["same_model"]]
    res["reproducible"] = all(checks)
    out = Path(args.out or ROOT / "benchmarks" / "results" / f"device_checks_{device.split(':')[0]}.json")
    write_result(res, out, device=device)
    print("reproducible:", res["reproducible"], "->", out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
