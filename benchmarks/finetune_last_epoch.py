#!/usr/bin/env python
"""The last epoch of a ``benchmarks/finetune.py`` run, on its held-out and validation sets (not a test).

``finetune.py`` keeps the epoch with the lowest validation force MAE, the base model included; with
two validation compounds that choice is noisy, and when no epoch beats the base the "fine-tuned"
model *is* the base. This script loads the last epoch's weights from the run's ``checkpoint.pt``,
writes them as a matgl model directory and scores it with the same function and metric
(:func:`tdphonon.finetune.flows.evaluate`) on the held-out and validation sets of the
result JSON; the block ``last_epoch`` is added to that JSON.

    python benchmarks/finetune_last_epoch.py RESULT.json [--work WORK_DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

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

    from tdphonon.finetune.flows import evaluate

    path = Path(args.result)
    res = json.loads(path.read_text())
    work = Path(args.work or res["work_dir"])
    ckpt = torch.load(work / "train" / "checkpoint.pt", map_location="cpu", weights_only=False)
    model = matgl.load_model(res["settings"].get("base_model_dir") or str(SHARED / "models" /
                                                                         "M3GNet-MP-2021.2.8-PES"))
    model.load_state_dict(ckpt["model"])
    out_dir = work / "last_epoch_model"
    model.save(str(out_dir))
    heldout = list(res["heldout_compounds"])
    ev = evaluate([SHARED / "reference"], {"last_epoch": str(out_dir)}, heldout,
                  labels=heldout + list(res["val_sets"]))["models"]["last_epoch"]
    held = ev["mae_thz_heldout"]
    res["last_epoch"] = {
        "epoch": int(ckpt["epoch"]), "model_sha256": ev["model"]["sha256"],
        "per_set": {k: v["mae_thz"] for k, v in ev["materials"].items()},
        "mae_thz_heldout": held, "improvement_heldout": res["mae_thz_before_heldout"] / held,
        "note": "weights of the last epoch (checkpoint.pt), not the validation-selected ones",
    }
    path.write_text(json.dumps(res, indent=1, default=str))
    print(json.dumps(res["last_epoch"], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
