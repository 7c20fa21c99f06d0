#!/usr/bin/env python
"""The last epoch of a ``benchmarks/finetune.py`` run, on its held-out and validation sets (not a test).

``finetune.py`` keeps the epoch with the lowest validation force MAE, the base model included; with
two validation compounds that choice is noisy, and when no epoch beats the base the "fine-tuned"
model *is* the base. This script loads the last epoch's weights from the run's ``checkpoint.pt``,
writes them as a matgl model directory and scores it with the same function and metric
(:func:`tdphonon.evaluation.compare_with_reference`) on the held-out and validation sets of the
result JSON; the block ``last_epoch`` is added to that JSON.

    python benchmarks/finetune_last_epoch.py RESULT.json [--work WORK_DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("TDPHONON_SHARED", ROOT.parent / "shared"))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("result", help="JSON written by benchmarks/finetune.py")
    ap.add_argument("--work", default=None, help="its work dir (default: the JSON's work_dir)")
    args = ap.parse_args(argv)
    import warnings

    warnings.filterwarnings("ignore")
    import matgl
    import torch

    from tdphonon.evaluation import compare_with_reference
    from tdphonon.finetune.flows import _as_reference
    from tdphonon.finetune.sources import read_reference_collection
    from tdphonon.potentials import load_potential

    path = Path(args.result)
    res = json.loads(path.read_text())
    work = Path(args.work or res["work_dir"])
    ckpt = torch.load(work / "train" / "checkpoint.pt", map_location="cpu", weights_only=False)
    model = matgl.load_model(res["settings"].get("base_model_dir") or str(SHARED / "models" /
                                                                         "M3GNet-MP-2021.2.8-PES"))
    model.load_state_dict(ckpt["model"])
    out_dir = work / "last_epoch_model"
    model.save(str(out_dir))
    pot = load_potential(str(out_dir), device="cpu", cache=False)
    labels = list(res["heldout_compounds"]) + list(res["val_sets"])
    rep = read_reference_collection(SHARED / "reference", skip_larger_than=res["settings"]["max_atoms"])
    per = {e.label: compare_with_reference(_as_reference(e), pot).mae_thz for e in rep.entries if e.label in labels}
    held = [per[lab] for lab in res["heldout_compounds"]]
    res["last_epoch"] = {
        "epoch": int(ckpt["epoch"]), "model_sha256": pot.identity.sha256, "per_set": per,
        "mae_thz_heldout": float(np.mean(held)),
        "improvement_heldout": res["mae_thz_before_heldout"] / float(np.mean(held)),
        "note": "weights of the last epoch (checkpoint.pt), not the validation-selected ones",
    }
    path.write_text(json.dumps(res, indent=1, default=str))
    print(json.dumps(res["last_epoch"], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
