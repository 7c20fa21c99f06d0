#!/usr/bin/env python
"""Recipe of the project's own model: M3GNet fine-tuned on every shared DFT harmonic set.

Run on a GPU node (150 epochs, the paper's recipe); the result is written where tdphonon looks for
its shipped default model (src/tdphonon/data/models/tdphonon-m3gnet), with its model card:

    python workflows/finetune_recipe.py --device cuda [--epochs 150] [--out src/tdphonon/data/models/tdphonon-m3gnet]

Steps (the same as `tdphonon finetune dataset|train`): all sets of ../shared/reference up to
--max-atoms atoms in the supercell, 10 random-displacement configurations (0.01-0.05 A) per set plus
10 thermal ones at 300 K, F = -Phi u; 5 % of the compounds for validation (early stopping), none
held out; force-MAE training from M3GNet-MP-2021.2.8-PES.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("TDPHONON_SHARED", ROOT.parent / "shared"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=150)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--max-atoms", type=int, default=600)
    ap.add_argument("--device", default=None)
    ap.add_argument("--work", default=None)
    ap.add_argument("--out", default=str(ROOT / "src" / "tdphonon" / "data" / "models" / "tdphonon-m3gnet"))
    args = ap.parse_args()
    from tdphonon.finetune.dataset import DatasetSettings
    from tdphonon.finetune.flows import make_dataset, train
    from tdphonon.finetune.train import FineTuneSettings

    work = Path(args.work or tempfile.mkdtemp(prefix="tdphonon-recipe-"))
    make_dataset([SHARED / "reference"], work / "dataset",
                 DatasetSettings(n_random=10, temperatures=(300.0,), n_thermal=10, val_fraction=0.05, seed=0),
                 overwrite=True)
    card = train(work / "dataset", str(SHARED / "models" / "M3GNet-MP-2021.2.8-PES"), work / "train",
                 FineTuneSettings(epochs=args.epochs, lr=args.lr, patience=20, device=args.device),
                 name="tdphonon-m3gnet",
                 progress=lambda e, n, r: print(f"epoch {e}/{n}: train {r['train_mae']:.4f} val {r['val_mae']:.4f}"))
    out = Path(args.out)
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(work / "train" / "model", out)
    print(f"model {out} sha256 {card['sha256']}; force MAE {card['force_mae_before']} -> {card['force_mae_after']}")


if __name__ == "__main__":
    main()
