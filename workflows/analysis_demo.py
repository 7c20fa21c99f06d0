#!/usr/bin/env python
"""The analysis demonstration: >= 100 real compounds -> TDPH campaign (offline MLIP) -> report.

One command reproduces it (resumable: materials already in the store are skipped)::

    .venv/bin/python workflows/analysis_demo.py [--out out/analysis_demo] [--limit N]

Steps:

1. ``workflows/demo_structures.py``: prototype compounds from handbook lattice parameters plus the
   DFT reference unit cells of ``../shared/reference`` (when present), written as CIFs + manifest.
2. The per-material TDPH flow (:class:`tdphonon.flows.TDPhononMaker`) run in-process into a
   file-backed jobflow store (``OUT/store``) — the same documents a FireWorks campaign writes to
   MongoDB. Settings (chosen for a 2-core CPU; see ``SETTINGS``): CHGNet 0.3.0 (ships its weights),
   cell + positions relaxed with the MLIP, supercells >= 8 Å wide and <= 160 atoms, 300 K,
   one-shot force fit on 16 antithetic quantum-thermal configurations.
3. ``tdphonon analyze`` over that store (figures, tables, random-forest models, screening, HTML
   report in ``OUT/report``; ``--reference`` applies the paper's ML-vs-DFT outlier filter), and the
   machine-readable summary ``benchmarks/results/analysis_demo.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "workflows"))

CAMPAIGN = "analysis-demo"
SETTINGS = {
    "model": "sevennet-0",
    "temperatures": (300.0,),
    "harmonic_settings": {"relax": True, "min_length": 8.0, "max_atoms": 160},
    "tdph_settings": {"estimator": "force_fit", "n_configurations": 16, "self_consistent": False, "seed": 0},
}


def run_campaign(structures_dir: Path, store_dir: Path, limit: int | None = None) -> dict:
    """Run (or resume) the demonstration campaign; returns the run report as a dict."""
    from tdphonon import campaign as cmp
    from tdphonon.flows import TDPhononMaker
    from tdphonon.potentials import resolve_model_spec

    mats, skipped = cmp.read_inputs(structures_dir)
    if limit:
        mats = mats[:limit]
    maker = TDPhononMaker(model=resolve_model_spec(SETTINGS["model"]), temperatures=SETTINGS["temperatures"],
                          harmonic_settings=SETTINGS["harmonic_settings"], tdph_settings=SETTINGS["tdph_settings"],
                          campaign=CAMPAIGN)
    t0 = time.perf_counter()

    def progress(label, k, n):
        print(f"[{time.perf_counter() - t0:7.0f} s] {k}/{n} {label}", flush=True)

    rep = cmp.run_local(mats, maker, cmp.local_store(store_dir), progress=progress)
    return {"n_inputs": len(mats), "unreadable": skipped, "computed": len(rep.submitted),
            "already_stored": len(rep.duplicates), "failed": rep.failed, "seconds": time.perf_counter() - t0}


def main(argv: list[str] | None = None) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "out" / "analysis_demo")
    ap.add_argument("--reference", type=Path, default=ROOT.parent / "shared" / "reference")
    ap.add_argument("--limit", type=int, default=None, help="only the first N materials (smoke runs)")
    ap.add_argument("--skip-campaign", action="store_true", help="analyse what is in the store")
    ap.add_argument("--summary", type=Path, default=ROOT / "benchmarks" / "results" / "analysis_demo.json")
    args = ap.parse_args(argv)

    import demo_structures

    structures = args.out / "structures"
    demo_structures.write(structures, args.reference if args.reference.exists() else None)
    report = {}
    saved = args.out / "campaign_report.json"
    if args.skip_campaign and saved.exists():  # analysing an earlier run: report what that run did
        report = json.loads(saved.read_text())
    if not args.skip_campaign:
        report = run_campaign(structures, args.out / "store", args.limit)
        (args.out / "campaign_report.json").write_text(json.dumps(report, indent=1))
        print(f"campaign: {report['computed']} computed, {report['already_stored']} already stored, "
              f"{len(report['failed'])} failed in {report['seconds']:.0f} s")

    from tdphonon.analysis.report import analyze

    ref = args.reference if args.reference.exists() else None
    result = analyze(store_dir=args.out / "store", out=args.out / "report", campaign=CAMPAIGN,
                     manifest=structures / "manifest.json", reference=ref)
    summary = dict(result.summary)
    summary["campaign_settings"] = {k: (list(v) if isinstance(v, tuple) else v) for k, v in SETTINGS.items()}
    summary["command"] = "python workflows/analysis_demo.py"
    if report:
        summary["campaign_failures"] = report["failed"]
        summary["campaign_seconds"] = report["seconds"]
        summary["campaign_inputs"] = report["n_inputs"]
        summary["campaign_hardware_note"] = "2-core CPU shared with other jobs during the run"
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from _common import write_result  # provenance + atomic write, shared with the benchmarks

    write_result(summary, args.summary)
    print(f"report: {result.report_path}")


if __name__ == "__main__":
    main()
