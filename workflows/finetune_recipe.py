#!/usr/bin/env python
"""Recipe of the project's own model: M3GNet fine-tuned on every shared DFT harmonic set.

    python workflows/finetune_recipe.py [--device cuda] [--epochs 150] [--max-hours H] [--select phonon_mae]
                                        [--out src/tdphonon/data/models/tdphonon-m3gnet]

The model is written where tdphonon looks for its shipped model (``--model tdphonon-m3gnet``), with a
model card (``model_card.json`` + ``README.md``) that states the data, the split, the training and
the harmonic-phonon accuracy of the base and the fine-tuned model on every set.

The shipped model (2026-12-07; 84 min on 2 CPU cores; its card's ``recipe.argv``) is::

    python workflows/finetune_recipe.py --epochs 16 --n-modes 10 --n-modes-unstable 30 \
        --thermal-temperatures 300 600 --n-thermal 4 --thermal-labels base_anharmonic \
        --select phonon_mae --keep last --out src/tdphonon/data/models/tdphonon-m3gnet

It was trained before training ran deterministically. Today the command gives a model of its accuracy
(2026-12-08, sha256 ``ad2cc8ec…``, 79 min of training; deterministic on the same hardware and thread
count: two 12-epoch benchmark runs matched to the bit, this one was run once), not its bits; that
model does not pass the replace gate of ``benchmarks/shipped_candidate.py``, by margins below the
run-to-run noise (docs/finetune.md, "The shipped recipe retrained under deterministic training").

The defaults below are the earlier random-displacement recipe (the model shipped until 2026-12-06);
docs/finetune.md ("The shipped model") has how each option was chosen and the candidates' verdicts.

Steps (the same functions as `tdphonon finetune dataset|train|evaluate`):

1. every set of ``../shared/reference`` whose supercell has at most ``--max-atoms`` atoms
   (the 512-atom NaCl/MgO phono3py supercells repeat compounds that smaller sets cover);
2. ``--n-random`` configurations per set with random displacements of 0.01–0.05 Å and forces
   F = −Φu (the paper's recipe), plus up to ``--max-raw`` raw DFT configurations per set of the
   kinds ``--raw-kinds`` used as they are (default ``random``: the random-displacement sets of AlN,
   NaCl ×3; both shipped models were trained so). The large-amplitude sets of SrTiO3 (40) and BaTiO3
   (80, capped at 40) are of kind ``md+random``. Adding them (``--raw-kinds random md+random``, 16 CPU
   epochs, 2026-11-21) did not help: validation selected epoch 3 of 16, the training-set phonon MAE
   rose from 0.49 to 0.69 THz, and on the SrTiO3 DFT cell R stays imaginary at 300 K (−1.29 THz, not
   converged) while the harmonic Γ-TO1 is +4.1 THz (DFT −1.75). No *thermal* configurations with
   F = −Φu: at thermal amplitudes the harmonic forces are wrong (soft-mode double wells become
   pure inverted parabolas), and training on them would teach the model to be harmonic exactly
   where TDPH measures anharmonicity;
3. 5 % of the compounds (seeded) for validation and model selection; nothing else held out
   (the held-out accuracy of this recipe is measured by ``benchmarks/finetune.py``);
4. force-MAE training from M3GNet-MP-2021.2.8-PES, Adam with cosine decay; the best epoch on
   the validation force MAE is kept (``--select phonon_mae``: on the validation sets' harmonic
   frequency MAE against their DFT force constants instead; the first shipped model used the force MAE;
   ``--keep last`` writes the last epoch's weights instead of the selected ones, and re-exports a
   finished run of the same ``--work`` and arguments without training again: with two validation
   compounds, selection on either score picks epochs by noise, see docs/finetune.md);
   ``--max-hours`` stops a CPU/SLURM run cleanly (checkpointed:
   the same command with the same ``--work`` resumes). ``--anchor-weight λ`` adds the L2-SP term
   λ‖θ − θ_base‖² (default off). Measured with ``benchmarks/finetune.py`` (12 CPU epochs, same split,
   2026-11-21), phonon MAE held-out / training compounds (base 2.42 / 2.55 THz):

   ====================  =====================  =====================
   λ                     best-validation epoch  last epoch
   ====================  =====================  =====================
   0 (shipped recipe)    1.38 / 0.54 (1.75×)    1.38 / 0.52
   0.05                  1.35 / 1.30 (epoch 0)  1.27 / 0.94 (1.91× / 2.7×)
   ====================  =====================  =====================

   Against the unanchored last epoch the anchor helps MgO (0.52 → 0.24) and Si (3.20 → 2.55 THz; the
   base gives 2.45: every universal model tested is 2.3–2.5 THz off this PBE set), slightly hurts ZnO,
   SnO2 and Zr3N4 (+0.06–0.15 THz), and costs the training compounds more than it gains; the
   2-compound validation split picks epochs by noise (epoch 0 of the anchored run). Neither setting
   reaches 2× held-out and 4× training at once. Weight-space interpolation between the base and the
   fine-tuned weights does not either (best held-out 1.38 THz at α = 1; α chosen on validation: 1.5,
   held-out 1.39): Si gets worse along the whole fine-tuning direction, the four other held-out
   compounds improve 2.2–3.3× (docs/finetune.md, benchmarks/finetune_transfer.py);
5. harmonic phonons of the base and the fine-tuned model on every set's DFT supercell and
   commensurate q-points: frequency MAE per compound, into the card.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("TDPHONON_SHARED", ROOT.parent / "shared"))
DEFAULT_OUT = ROOT / "src" / "tdphonon" / "data" / "models" / "tdphonon-m3gnet"


def main(argv: list[str] | None = None) -> None:
    from tdphonon.finetune.recipe import (  # light: no torch
        add_recipe_options,
        dataset_settings,
        finetune_settings,
        prepare_dataset,
        split_labels,
    )

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_recipe_options(ap, epochs=150, patience=20, device=None)
    ap.add_argument("--work", default=str(ROOT / "out" / "finetune_recipe"))
    ap.add_argument("--out", default=str(DEFAULT_OUT))
    args = ap.parse_args(argv)
    import warnings

    warnings.filterwarnings("ignore")
    from tdphonon.finetune.evaluate import evaluate_models
    from tdphonon.finetune.flows import _as_reference, train
    from tdphonon.finetune.train import _card_markdown

    base = str(SHARED / "models" / "M3GNet-MP-2021.2.8-PES")
    work = Path(args.work)
    ds_dir = work / "dataset"
    t0 = time.perf_counter()
    from tdphonon.finetune.sources import read_reference_collection

    rep = read_reference_collection(SHARED / "reference", skip_larger_than=args.max_atoms)
    print(f"{len(rep.entries)} sets read, {len(rep.skipped)} skipped ({time.perf_counter() - t0:.0f} s)", flush=True)
    st = dataset_settings(args)
    manifest = prepare_dataset(list(rep.entries) + list(rep.skipped), st, ds_dir, base, args.device)
    print("dataset:", {k: v["n_structures"] for k, v in manifest["splits"].items()},
          "(reused)" if manifest.get("reused") else "", flush=True)
    settings = finetune_settings(args)
    card = train(ds_dir, base, work / "train", settings, name="tdphonon-m3gnet",
                 references=[SHARED / "reference"] if args.select == "phonon_mae" else None,
                 progress=lambda e, n, r: print(f"epoch {e}/{n}: train {r['train_mae']:.4f} "
                                                f"val {r['val_mae']:.4f} eV/A ({r['seconds']:.0f} s)", flush=True))
    model_dir = work / "train" / "model"

    # harmonic accuracy of base and fine-tuned model on every set (validation compounds = not trained on)
    comps = manifest.get("compounds", {})
    val_labels = split_labels(manifest, "val")
    used = {lab for c in comps.values() for lab in c["labels"]}
    read = {e.label for e in rep.entries}
    refs = [_as_reference(e) for e in rep.entries if e.label in used]
    t0 = time.perf_counter()
    ev = evaluate_models({"base": base, "finetuned": str(model_dir)}, refs, val_labels, device=args.device or "cpu")
    b, a = ev["models"]["base"], ev["models"]["finetuned"]
    card["recipe"] = {"script": "workflows/finetune_recipe.py", "argv": sys.argv[1:] if argv is None else argv,
                      "max_atoms": args.max_atoms, "skipped_sets": [s.to_dict() for s in rep.skipped],
                      # read, but dropped while the data were built (reason given): not in the per-set table
                      "dropped_from_data": [d for d in manifest.get("skipped", [])
                                            if d.get("label") in read]}
    card["evaluation"] = {
        "what": "harmonic phonon frequencies on each set's DFT supercell, commensurate q-points; "
                "validation compounds were not trained on",
        "units": "THz",
        "mae_thz_base_train": b["mae_thz_train"], "mae_thz_finetuned_train": a["mae_thz_train"],
        "mae_thz_base_val": b["mae_thz_heldout"], "mae_thz_finetuned_val": a["mae_thz_heldout"],
        "val_compounds": val_labels,
        "per_set": {lab: {"base": b["materials"][lab].get("mae_thz"), "finetuned": a["materials"][lab].get("mae_thz")}
                    for lab in sorted(b["materials"])},
        "seconds": time.perf_counter() - t0,
    }
    card["licence"] = ("BSD-3-Clause, as the base model (matgl's M3GNet-MP-2021.2.8-PES weights; LICENSE-matgl in "
                       "this folder); training data: the DFT sets of ../shared/reference under their own licences")
    out = Path(args.out)
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(model_dir, out)
    if (SHARED / "models" / "LICENSE-matgl").exists():
        shutil.copy(SHARED / "models" / "LICENSE-matgl", out / "LICENSE-matgl")
    (out / "model_card.json").write_text(json.dumps(card, indent=1, default=str))
    (out / "README.md").write_text(_card_markdown(card))
    print(f"model {out} sha256 {card['sha256']}; force MAE {card['force_mae_before']} -> {card['force_mae_after']}; "
          f"phonon MAE (THz) train {b['mae_thz_train']:.3f} -> {a['mae_thz_train']:.3f}, "
          f"validation {b['mae_thz_heldout']:.3f} -> {a['mae_thz_heldout']:.3f}", flush=True)


if __name__ == "__main__":
    main()
