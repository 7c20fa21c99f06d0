#!/usr/bin/env python
"""Benchmark: the noise-aware stop of self-consistent TDPH (``noise_tol``) on SrTiO3 (not a test).

Self-consistent TDPH of cubic SrTiO3 on the DFT cell with the settings of
``benchmarks/validation_SrTiO3.py`` (force fit, 32 configurations per iteration with reuse, |ν| ≥ 1.5
THz, tol 0.05 THz, at most 15 iterations), once with ``noise_tol = 0`` (tolerance only) and once with
each ``--noise-tol`` value. Per model and temperature: iterations, force calls, whether and how it
converged, the largest |Δν|/σ at the stop, and the R soft mode and Γ-TO1 (THz) against DFT SCPH on the
same q-points (``validation_SrTiO3.json``). The question: does stopping on the noise floor give the same
answer for fewer force calls?

    python benchmarks/noise_stop.py [--models sevennet-0 DIR ...] [--noise-tol 3] [--temperatures 300 600]
        [--target-error 0.15] [--merge]

``--target-error e`` adds, per ``--noise-tol`` value, a run that stops on noise only once the largest
frequency error is ≤ e THz (``target_error_thz``: precision on demand). ``--merge`` keeps the runs
already in the output file and computes only the missing ones.

Writes ``benchmarks/results/noise_stop_SrTiO3.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
SHARED = Path(os.environ.get("TDPHONON_SHARED", ROOT.parent / "shared"))
OUT = ROOT / "benchmarks" / "results" / "noise_stop_SrTiO3.json"


def run_one(potential, temperatures: list[float], noise_tol: float, n_configurations: int,
            target_error: float = 0.0) -> dict:
    """Self-consistent TDPH of SrTiO3 (validation settings) with ``noise_tol`` (and ``target_error_thz``);
    per temperature a summary."""
    import validation_SrTiO3 as v

    from tdphonon.pipeline import run_tdph

    ts = dataclasses.replace(v.tdph_settings(True, n_configurations), noise_tol=noise_tol,
                             target_error_thz=target_error)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # unconverged runs and policy notes are reported in the result
        res = run_tdph(v.dft_primitive(), potential, temperatures, v.dft_cell_harmonic_settings(), ts,
                       label="SrTiO3")
    out = {"settings_digest": ts.digest(), "seconds": time.perf_counter() - t0, "temperatures": {}}
    for tr in res.temperatures:
        r = tr.renormalization
        last = r.history[-1]
        out["temperatures"][f"{tr.temperature:g}K"] = {
            "converged": r.converged, "converged_on": last.get("converged_on", "tol" if r.converged else None),
            "imaginary_fixed_point": r.mode_report.get("imaginary_fixed_point"),
            "n_iterations": r.n_iterations, "force_calls": r.force_calls,
            "residual_thz": last["residual_thz"], "residual_sigmas": last.get("residual_sigmas"),
            "r_soft_thz": v.r_soft(r.named_frequencies["R"]),
            "gamma_to1_thz": v.gamma_to1(r.named_frequencies["Gamma"]),
            "max_frequency_error_thz": r.errors.get("max_frequency_error_thz")}
    return out


def main(argv=None) -> int:
    from _common import write_result

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+",
                    default=["sevennet-0", str(SHARED / "models" / "M3GNet-MP-2021.2.8-PES")])
    ap.add_argument("--noise-tol", type=float, nargs="+", default=[3.0])
    ap.add_argument("--temperatures", type=float, nargs="+", default=[300.0, 600.0])
    ap.add_argument("--n-configurations", type=int, default=32)
    ap.add_argument("--target-error", type=float, nargs="*", default=[])
    ap.add_argument("--merge", action="store_true", help="keep the runs already in --out; compute the others")
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args(argv)
    from tdphonon.potentials import load_potential

    val = json.loads((ROOT / "benchmarks" / "results" / "validation_SrTiO3.json").read_text())
    scph = val["engine_check"]["scph_commensurate"]
    result: dict = {"description": __doc__.strip().splitlines()[0],
                    "dft_scph_2x2x2": {"r_soft_thz": scph["r_soft_thz"], "gamma_to1_thz": scph["gamma_to1_thz"]},
                    "n_configurations": args.n_configurations, "models": {}}
    old = json.loads(Path(args.out).read_text()) if args.merge and Path(args.out).exists() else {}
    if old and old.get("n_configurations") != args.n_configurations:
        ap.error(f"--merge: {args.out} has n_configurations {old.get('n_configurations')}")
    variants = [(0.0, 0.0)] + [(z, 0.0) for z in args.noise_tol] + \
        [(z, e) for z in args.noise_tol for e in args.target_error]
    for spec in args.models:
        pot = load_potential(spec, device="cpu")
        stored = old.get("models", {}).get(pot.identity.name, {})
        if stored and stored["model"]["sha256"] != pot.identity.sha256:
            ap.error(f"--merge: {pot.identity.name} in {args.out} is another model (sha256)")
        runs = dict(stored.get("runs", {}))
        for z, e in variants:
            name = f"noise_tol_{z:g}" + (f"_target_{e:g}" if e else "")
            if name in runs:
                continue
            runs[name] = run_one(pot, list(args.temperatures), z, args.n_configurations, e)
            for t, s in runs[name]["temperatures"].items():
                print(f"{pot.identity.name} {name} {t}: {s['n_iterations']} iterations, "
                      f"{s['force_calls']} force calls, converged {s['converged']} ({s['converged_on']}), "
                      f"R {s['r_soft_thz']:.2f} ± {s['max_frequency_error_thz']:.2f} THz", flush=True)
        result["models"][pot.identity.name] = {"model": pot.identity.to_dict(), "runs": runs}
    for name, m in old.get("models", {}).items():  # models not rerun this time
        result["models"].setdefault(name, m)
    write_result(result, Path(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
