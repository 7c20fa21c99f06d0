#!/usr/bin/env python
"""Benchmark: cost of Φ(T) (force calls, wall time) vs accuracy of the Γ, X, M, R frequencies.

Cubic SrTiO3 (examples/SrTiO3.cif, no relaxation: the CIF lattice, a = 3.905 Å), 2×2×2 supercell
(40 atoms), 300 K, quantum (Bose–Einstein) amplitudes, default ModeAmplitudePolicy ("abs"), for
universal M3GNet (../shared/models) and CHGNet 0.3.0, on the CPU. Methods (tdphonon.renormalize):

* ``hessian_one_shot`` / ``force_fit_one_shot``: Σ from Φ⁰, one round; n_configurations swept,
  several seeds per n (antithetic pairs).
* ``hessian_sc`` / ``force_fit_sc``: self-consistent (mixing α), error recorded after every
  iteration (the estimate ⟨H⟩_{Σ(Φ_k)} that renormalize would return if it stopped there).
* ``hiphive_style_sc``: force fit, 30 independent structures per iteration (no antithetic pairs),
  α = 0.2, 50 iterations (hiPhive's self-consistent-phonon tutorial settings: ≈ 1,500 force calls).
* ``force_fit_sc_reuse`` / ``hessian_sc_reuse``: self-consistent with ``reuse_samples`` (every
  estimate pools the configurations of the earlier iterations, importance-reweighted to the current Σ).
* ``quartic_fit_one_shot`` / ``quartic_fit_sc``: the model-based estimator (tdphonon.taylor): Φ₂ + Φ₄
  (quartic clusters to the 2nd neighbour shell) fitted to the odd forces of the ± pairs, ⟨H⟩_Σ in
  closed form, each SC iteration jumping to the SCPH fixed point of the fitted model; scored on that
  fixed point, which is what a run returns (``quartic_output="fixed_point"``).
  ``quartic_fit_sc_shells1`` / ``_shells3``: the same with 1 / 3 shells (truncation of the model);
  ``quartic_fit_sc_reuse``: every fit uses the (reweighted) configurations of the earlier iterations too.
  On the surrogates the 2-shell model contains the true potential (its Φ₄ has 2 shells): exact by
  construction there; the 1-shell variant measures truncation on a known answer.

Error = max |ν − ν_ref| over all branches at Γ, X, M, R (the 3 acoustic Γ modes excluded; RMS also
stored) against a converged reference: self-consistent force fit with many configurations and
independent seeds at the final Σ (its standard error is stored). For the MLIPs a second, more precise
reference (``reference_quartic``: the quartic fit with many configurations and seeds; it has the
force fit's large-sample limit) checks the first one and re-scores every method
(``methods_vs_precise_reference``). Cost = force calls, a Hessian
counted as its central-difference equivalent 6N = 240 force calls (raw counters also stored); for a
model without analytic Hessians (CHGNet) the Hessians *are* 6N force calls. Also times the Hessian
routes for M3GNet (autograd MatglPotential.hessians, finite differences fd_hessians, matgl's own
``Potential(calc_hessian=True)``) and checks their agreement.

Writes benchmarks/results/tdph_cost.json (summaries per potential and method), every run step by step
in tdph_cost_runs/<potential>.json (incrementally: finished runs are reused on restart), and
tdph_cost.png. Not a test.

    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/tdph_cost.py [--potentials m3gnet chgnet] [--quick]
    (3x3x3 cells: --potentials M3GNet-MP-2021.2.8-PES-3x3x3 CHGNet-0.3.0-3x3x3; surrogates: ifc / ifc3)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import sys
import time
import traceback
import warnings
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
warnings.filterwarnings("ignore")

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("TDPHONON_SHARED", ROOT.parent / "shared"))
OUT = ROOT / "benchmarks" / "results"
CIF = ROOT / "examples" / "SrTiO3.cif"

POTENTIALS = {
    "M3GNet-MP-2021.2.8-PES": str(SHARED / "models" / "M3GNet-MP-2021.2.8-PES"),
    "CHGNet-0.3.0": "chgnet",
    # Φ₂ + Φ₃ + Φ₄ Taylor potential of the PBEsol DFT data (validation_SrTiO3.py): exact reference, cheap calls
    "SrTiO3-PBEsol-IFC-Taylor": "ifc",
    # the same IFCs on the 3x3x3 supercell (Φ₂ Fourier-interpolated from the DFT 2x2x2 set)
    "SrTiO3-PBEsol-IFC-Taylor-3x3x3": "ifc3",
    # universal M3GNet on the 3x3x3 cell (135 atoms, ~0.5 s per force call on 2 CPU cores): reduced plan
    "M3GNet-MP-2021.2.8-PES-3x3x3": str(SHARED / "models" / "M3GNet-MP-2021.2.8-PES"),
    # CHGNet on the 3x3x3 cell (~2 s per 135-atom force call on one CPU core): smallest plan, ~1,300 force calls
    "CHGNet-0.3.0-3x3x3": "chgnet",
}
#: result file per potential kind (default tdph_cost.json); one file per surrogate cell keeps each < 2 MB
RESULT_NAMES = {"ifc": "tdph_cost_surrogate", "ifc3": "tdph_cost_surrogate_3x3x3"}
#: supercell size per potential (default 2)
SUPERCELLS = {"SrTiO3-PBEsol-IFC-Taylor-3x3x3": 3, "M3GNet-MP-2021.2.8-PES-3x3x3": 3, "CHGNet-0.3.0-3x3x3": 3}
TEMPERATURE = 300.0
THRESHOLDS = {"0p05": 0.05, "0p1": 0.1}
# run order: the Hessian methods (known to cost ≥ 480 force-call equivalents per estimate) last
METHODS = ["force_fit_one_shot", "force_fit_sc", "hiphive_style_sc", "hessian_one_shot", "hessian_sc",
           "force_fit_sc_reuse", "hessian_sc_reuse",
           # model-based: quartic Taylor model fitted to the odd ± forces (2 shells; 1 and 3 for truncation)
           "quartic_fit_one_shot", "quartic_fit_sc", "quartic_fit_sc_shells1", "quartic_fit_sc_shells1_long",
           "quartic_fit_sc_shells3",
           "quartic_fit_sc_reuse",
           # surrogates only (exact Φ(T) known): one estimate at the converged Σ — the statistical floor
           "force_fit_at_fixed_point", "hessian_at_fixed_point"]
#: policy of the reference (and of SC reruns after a SamplingError with the default 0.5 THz threshold)
REF_POLICY = {"kind": "abs", "threshold_thz": 1.5}
ANCHORS = {"paper_single_hessian_fd": 240, "hiphive_style_30x50": 1500}


# --------------------------------------------------------------------------------------------
# plan
# --------------------------------------------------------------------------------------------
def plan(args, key: str) -> dict:
    """Settings per method (smaller for the slower CHGNet, tiny with --quick).

    Reference: two stages, both self-consistent force fits warm-started one from the other (stage 1
    converges the Σ cheaply, stage 2 refines with many configurations and independent seeds).
    One-shot sweeps are lists of (n_configurations, seed).
    """
    slow = key.startswith("CHGNet")
    quartic = {
        "quartic_fit_one_shot": dict(runs=[(n, sd) for n in (4, 8, 16) for sd in range(3)]),
        "quartic_fit_sc": dict(ns=[4, 8, 16], mixing=0.3, max_it=5, seeds=[200, 201, 202]),
        "quartic_fit_sc_shells1": dict(ns=[4, 8], mixing=0.3, max_it=5, seeds=[200, 201, 202], shells=1),
        "quartic_fit_sc_shells3": dict(ns=[16], mixing=0.3, max_it=5, seeds=[200, 201, 202], shells=3),
        "quartic_fit_sc_reuse": dict(ns=[8, 16], mixing=0.3, max_it=10, seeds=[200, 201, 202]),
    }
    if key == "M3GNet-MP-2021.2.8-PES-3x3x3" and not args.quick:
        # 135 atoms, ~0.2-0.3 s per force call and ~80 s per autograd Hessian (405 rows) on 2 CPU cores:
        # fewer seeds and iterations than the 2x2x2 plan, Hessian methods short
        return {
            "reference_stage1": dict(n=32, mixing=0.4, max_it=8),
            "reference": dict(n=args.ref_configs or 128, mixing=0.4, max_it=3, seeds=6),
            "reference_check": dict(n=16, mixing=0.4, max_it=40),
            # quartic design rows cost ~0.5 s per 135-atom configuration: fewer than on 2x2x2
            "reference_quartic": dict(n1=32, it1=5, n=96, max_it=2, seeds=6),
            "force_fit_one_shot": dict(runs=[(n, sd) for n in (2, 4, 8, 16, 32, 64) for sd in (0, 1)]),
            "force_fit_sc": dict(ns=[8, 16], mixing=0.3, max_it=15),
            "hiphive_style_sc": dict(n=30, mixing=0.2, max_it=args.hiphive_iterations or 50),
            "force_fit_sc_reuse": dict(ns=[8, 16], mixing=0.3, max_it=15),
            "hessian_one_shot": dict(runs=[(2, 0)]),
            "hessian_sc": dict(ns=[2], mixing=0.3, max_it=args.hessian_sc_iterations or 3),
            **quartic,
        }
    if key == "CHGNet-0.3.0-3x3x3" and not args.quick:
        # ~1,300 force calls in all (about an hour on one CPU core): a 320-call force-fit reference and a
        # 700-call quartic one, the model-based and the force-fit estimators; no Hessian methods (an FD Hessian is
        # 6N = 810 force calls) and no hiPhive-style loop (1,500 calls)
        return {
            "reference_stage1": dict(n=16, mixing=0.4, max_it=5),
            "reference": dict(n=args.ref_configs or 64, mixing=0.4, max_it=2, seeds=4),
            "reference_quartic": dict(n1=32, it1=5, n=64, max_it=2, seeds=4),
            "force_fit_one_shot": dict(runs=[(n, 0) for n in (4, 8, 16, 32)]),
            "force_fit_sc_reuse": dict(ns=[8], mixing=0.3, max_it=10),
            "quartic_fit_one_shot": dict(runs=[(8, 0), (16, 0)]),  # one seed each
            "quartic_fit_sc_reuse": dict(ns=[8], mixing=0.3, max_it=10, seeds=[200, 201, 202]),
        }
    if POTENTIALS[key].startswith("ifc") and not args.quick:
        # exact reference, cheap force calls: three seeds per SC variant, sweeps up to the noise floor;
        # shorter on the 135-atom 3x3x3 cell (a Hessian counts 6N = 810 force calls there)
        small = POTENTIALS[key] == "ifc"
        sc = dict(mixing=0.3, seeds=[200, 201, 202])
        one_shot_seeds = range(5 if small else 3)
        ff_ns = (2, 4, 8, 16, 32, 64, 128, 256) if small else (2, 4, 8, 16, 32, 64, 128)
        h_ns = (2, 4, 8, 16, 32) if small else (2, 4, 8)
        ff_fp = (8, 16, 32, 64, 128, 256, 512, 1024, 2048) if small else (8, 32, 128, 512)
        h_fp = (2, 4, 8, 16, 32, 64, 128) if small else (2, 8, 32)
        return {
            "force_fit_one_shot": dict(runs=[(n, sd) for n in ff_ns for sd in one_shot_seeds]),
            "force_fit_sc": dict(ns=[4, 8, 16, 32] if small else [4, 8, 16], max_it=20, **sc),
            "hiphive_style_sc": dict(n=30, mixing=0.2, max_it=args.hiphive_iterations or 50, seeds=sc["seeds"]),
            "hessian_one_shot": dict(runs=[(n, sd) for n in h_ns for sd in one_shot_seeds]),
            "hessian_sc": dict(ns=[2, 4] if small else [2], max_it=12, **sc),
            "force_fit_sc_reuse": dict(ns=[4, 8, 16], max_it=20, **sc),
            "hessian_sc_reuse": dict(ns=[2], max_it=12, **sc),
            "force_fit_at_fixed_point": dict(runs=[(n, sd) for n in ff_fp for sd in range(3)]),
            "hessian_at_fixed_point": dict(runs=[(n, sd) for n in h_fp for sd in range(3)]),
            **quartic,
            # the truncated model with many configurations: its error must keep falling (no asymptotic
            # truncation bias, docs/methods.md) — on the 40-atom cell, where calls are cheapest
            **({"quartic_fit_sc_shells1": dict(ns=[4, 8, 32, 128], mixing=0.3, max_it=5, seeds=[200, 201, 202],
                                               shells=1),
                "quartic_fit_sc_shells1_long": dict(ns=[128], mixing=0.3, max_it=15, seeds=[300, 301, 302],
                                                    shells=1)} if small else {}),
        }
    if args.quick:
        return {
            "reference_stage1": dict(n=8, mixing=0.4, max_it=2),
            "reference": dict(n=16, mixing=0.4, max_it=2, seeds=2),
            "reference_quartic": dict(n1=4, it1=2, n=8, max_it=2, seeds=2),
            "force_fit_one_shot": dict(runs=[(2, 0), (4, 0), (8, 0)]),
            "force_fit_sc": dict(ns=[8], mixing=0.3, max_it=3),
            "hiphive_style_sc": dict(n=30, mixing=0.2, max_it=3),
            "hessian_one_shot": dict(runs=[(2, 0)]),
            "hessian_sc": dict(ns=[2], mixing=0.3, max_it=2),
            "force_fit_sc_reuse": dict(ns=[8], mixing=0.3, max_it=3),
            "hessian_sc_reuse": dict(ns=[2], mixing=0.3, max_it=2),
            "quartic_fit_sc": dict(ns=[4], mixing=0.3, max_it=2),
        }
    ff_seeds = [0, 1] if slow else [0, 1, 2]
    return {
        "reference_stage1": dict(n=32 if slow else 64, mixing=0.4, max_it=8),
        "reference": dict(n=args.ref_configs or (128 if slow else 256), mixing=0.4, max_it=3,
                          seeds=6 if slow else 8),
        "force_fit_one_shot": dict(runs=[(n, sd) for n in (2, 4, 8, 16, 32, 64) for sd in ff_seeds]),
        "force_fit_sc": dict(ns=[8, 16] if slow else [8, 16, 32], mixing=0.3, max_it=15 if slow else 20),
        "hiphive_style_sc": dict(n=30, mixing=0.2, max_it=args.hiphive_iterations or 50),
        "hessian_one_shot": dict(runs=[(2, 0)] if slow else [(2, 0), (2, 1), (4, 0)]),
        "hessian_sc": dict(ns=[2], mixing=0.3, max_it=args.hessian_sc_iterations or (2 if slow else 6)),
        "reference_check": dict(n=32, mixing=0.4, max_it=40),
        "reference_quartic": dict(n1=32, it1=5, n=192, max_it=2, seeds=8),
        "force_fit_sc_reuse": dict(ns=[8, 16], mixing=0.3, max_it=15 if slow else 20),
        # FD Hessians of CHGNet cost 240 force calls each: the analytic-Hessian model only
        **({} if slow else {"hessian_sc_reuse": dict(ns=[2], mixing=0.3, max_it=8)}),
        **quartic,
    }


# --------------------------------------------------------------------------------------------
# recording every estimate made inside renormalize
# --------------------------------------------------------------------------------------------
@contextlib.contextmanager
def record_estimates(pot, steps: list):
    """Wrap tdphonon.renormalize._estimate: after each estimate store its Φ, time and counters.

    Benchmark-only instrumentation (the library keeps only residuals in ``history``); the wrapped
    function is restored on exit.
    """
    import tdphonon.renormalize as ren

    orig = ren._estimate

    def hooked(*args, **kwargs):  # (ctx, cov, seed, tag, n_blocks, ...): signature-agnostic
        est = orig(*args, **kwargs)
        tag = kwargs["tag"] if "tag" in kwargs else args[3]
        steps.append({"tag": tag, "fc": None if est.fc is None else est.fc.copy(), "t": time.perf_counter(),
                      "force_calls": pot.force_calls,
                      "hessian_calls": pot.hessian_calls})
        return est

    orig_pooled = ren._pooled_estimate

    def hooked_pooled(*args, **kwargs):  # reuse_samples: the pooled estimate replaces the last one
        est = orig_pooled(*args, **kwargs)
        if steps:
            steps[-1]["fc"] = est.fc.copy()
            steps[-1]["pool"] = {k: v for k, v in est.pool.items() if k != "ensembles"}
        return est

    orig_fp = ren._model_fixed_point

    def hooked_fp(*args, **kwargs):  # quartic_fit: the fitted model's fixed point, stored with its estimate
        rec = kwargs["record"] if "record" in kwargs else args[4]
        output = isinstance(rec.get("model_scph"), list)  # the final output: one solve per final estimate
        i = len(rec["model_scph"]) if output else 0
        fc = orig_fp(*args, **kwargs)
        if not steps:
            return fc
        if output:  # the i-th fitted estimate of the last iteration (seeds: itK, itKs1, ...; reuse: the pool)
            last = steps[-1]["tag"].split("s")[0]
            fitted = [st for st in steps if st["tag"].split("s")[0] == last and st["fc"] is not None]
            target = fitted[i] if i < len(fitted) else None  # later solves: batch-means blocks
        else:  # a jump: after the estimate just made
            target = steps[-1]
        if target is not None and "fixed_point_fc" not in target:
            target["fixed_point_fc"] = None if fc is None else fc.copy()
        return fc

    ren._estimate = hooked
    ren._pooled_estimate = hooked_pooled
    ren._model_fixed_point = hooked_fp
    try:
        yield
    finally:
        ren._estimate = orig
        ren._pooled_estimate = orig_pooled
        ren._model_fixed_point = orig_fp


class Bench:
    """One potential, one harmonic Φ⁰, one projector; runs renormalize and records the cost."""

    def __init__(self, key: str, pot, harm, qpoints: dict):
        from tdphonon.potentials import Potential
        from tdphonon.sampling import FCProjector

        self.key, self.pot, self.harm, self.qpoints = key, pot, harm, qpoints
        self.phonon = harm.phonon
        self.natom = len(self.phonon.supercell)
        self.projector = FCProjector.from_phonopy(self.phonon)
        # analytic Hessians do not touch force_calls; FD Hessians already count their 6N force calls
        self.analytic_hessian = type(pot).hessians is not Potential.hessians
        self.hessian_equiv = 6 * self.natom
        from tdphonon.sampling import full_force_constants

        self.fc0 = self.projector.project(full_force_constants(self.phonon))
        self.last_force_constants = None

    def named(self, fc) -> dict:
        from tdphonon.renormalize import phonopy_with_force_constants

        ph = phonopy_with_force_constants(self.phonon, fc)
        names = list(self.qpoints)
        ph.run_qpoints([self.qpoints[k] for k in names])
        freqs = ph.qpoints.frequencies
        return {k: np.asarray(f, dtype=float).tolist() for k, f in zip(names, freqs, strict=True)}

    def equiv(self, force_calls: int, hessian_calls: int) -> int:
        return int(force_calls + (self.hessian_equiv * hessian_calls if self.analytic_hessian else 0))

    def run(self, settings, start_force_constants=None) -> dict:
        """One renormalize run at 300 K; every estimate (and the mixed Φ_k+1 of SC runs) recorded."""
        from tdphonon.renormalize import renormalize, renormalize_temperature

        pot = self.pot
        steps: list = []
        c0, h0 = pot.force_calls, pot.hessian_calls
        t0 = time.perf_counter()
        try:
            with record_estimates(pot, steps):
                if start_force_constants is None:
                    res = renormalize(self.phonon, pot, [TEMPERATURE], settings, "SrTiO3",
                                      projector=self.projector)[0]
                else:
                    res = renormalize_temperature(self.phonon, pot, TEMPERATURE, settings, "SrTiO3",
                                                  start_force_constants=start_force_constants,
                                                  projector=self.projector)
        except Exception as exc:  # reported, never hidden
            traceback.print_exc(limit=2)
            return {"settings": settings.to_dict(), "error": f"{type(exc).__name__}: {exc}",
                    "steps": self._steps(steps, settings, start_force_constants, c0, h0, t0)}
        t1 = time.perf_counter()
        out_steps = self._steps(steps, settings, start_force_constants, c0, h0, t0)
        out = {
            "settings": settings.to_dict(),
            "warm_start": start_force_constants is not None,
            "steps": out_steps,
            "converged": res.converged,
            "n_iterations": res.n_iterations,
            "residuals_thz": [h["residual_thz"] for h in res.history],
            "min_frequency_out_thz": [h["min_frequency_out_thz"] for h in res.history],
            "rms_displacement_A": [h["rms_displacement"] for h in res.history],
            "force_calls_raw": res.force_calls,
            "hessian_calls": res.hessian_calls,
            "force_call_equivalents": self.equiv(res.force_calls, res.hessian_calls),
            "seconds": t1 - t0,
            "timings": res.timings,
            "final_frequencies": self.named(res.force_constants),
            "errors": res.errors,
            "mode_report": res.mode_report,
            "seeds": list(res.seeds),
        }
        self.last_force_constants = res.force_constants
        return out

    def _steps(self, steps: list, settings, start, c0: int, h0: int, t0: float) -> list:
        out = [self._step(st, c0, h0, t0) for st in steps]
        if settings.self_consistent and settings.estimator != "quartic_fit":  # quartic_fit jumps, never mixes
            # Φ_{k+1} = (1 − α) Φ_k + α ⟨H⟩_k: the mixed force constants (hiPhive's returned model)
            phi = self.projector.project(np.asarray(start, dtype=float)) if start is not None else self.fc0
            for st, raw in zip(out, steps, strict=True):
                if "s" in st["tag"][2:]:
                    continue
                phi = (1.0 - settings.mixing) * phi + settings.mixing * raw["fc"]
                st["mixed_frequencies"] = self.named(phi)
        return out

    def _step(self, s: dict, c0: int, h0: int, t0: float) -> dict:
        fc, hc = s["force_calls"] - c0, s["hessian_calls"] - h0
        out = {"tag": s["tag"], "seconds": s["t"] - t0, "force_calls_raw": fc, "hessian_calls": hc,
               "force_call_equivalents": self.equiv(fc, hc),
               **({"frequencies": self.named(s["fc"])} if s["fc"] is not None else {}),
               **({"pool": s["pool"]} if "pool" in s else {})}
        if s.get("fixed_point_fc") is not None:  # quartic_fit: the fitted model's own fixed point
            out["fixed_point_frequencies"] = self.named(s["fixed_point_fc"])
        elif "fixed_point_fc" in s:
            out["fixed_point_failed"] = True
        return out


def tdph_settings(**kw):
    from tdphonon.renormalize import TDPHSettings

    return TDPHSettings(**kw)


# --------------------------------------------------------------------------------------------
# errors and summaries
# --------------------------------------------------------------------------------------------
def _branches(named: dict) -> np.ndarray:
    out = []
    for k, f in named.items():
        f = np.sort(np.asarray(f, dtype=float))
        if k.lower() in ("gamma", "γ", "g"):
            f = np.sort(np.delete(f, np.argsort(np.abs(f))[:3]))
        out.append(f)
    return np.concatenate(out)


def freq_error(named: dict, ref: dict) -> dict:
    d = _branches(named) - _branches(ref)
    return {"max": float(np.max(np.abs(d))), "rms": float(np.sqrt(np.mean(d**2)))}


def reference_summary(run: dict) -> dict:
    """Final Γ/X/M/R frequencies of the reference and their standard error over the final seeds."""
    last_it = run["n_iterations"] - 1
    finals = [s for s in run["steps"] if s["tag"] == f"it{last_it}" or s["tag"].startswith(f"it{last_it}s")]
    # quartic_fit with the fixed-point output: the seeds' fixed points are what the result averages
    fkey = "fixed_point_frequencies" if all("fixed_point_frequencies" in s for s in finals) else "frequencies"
    finals = [s for s in finals if fkey in s]
    per = {k: np.array([s[fkey][k] for s in finals]) for k in run["final_frequencies"]}
    stderr = {k: (v.std(axis=0, ddof=1) / np.sqrt(len(v))).tolist() if len(v) > 1 else None for k, v in per.items()}
    se_all = _branches({k: np.asarray(v) for k, v in stderr.items()}) if len(finals) > 1 else None
    n_final = len(finals) * run["settings"]["n_configurations"]
    extrap = None
    if se_all is not None:
        sig_max = float(np.max(np.abs(se_all))) * np.sqrt(n_final)
        sig_rms = float(np.sqrt(np.mean(se_all**2))) * np.sqrt(n_final)
        extrap = {"note": "per-configuration spread σ₁ = standard error × √(configurations at the final Σ); "
                          "n ≳ (σ₁/threshold)² configurations at the converged Σ are needed for a standard error "
                          "below the threshold (rough statistical lower bound for any Gaussian-sampling force fit, "
                          "before the self-consistency iterations)",
                  "configurations_at_final_sigma": n_final, "sigma1_max_thz": sig_max, "sigma1_rms_thz": sig_rms}
        for k, t in THRESHOLDS.items():
            extrap[f"n_configurations_for_{k}_thz_max"] = int(np.ceil((sig_max / t) ** 2))
            extrap[f"n_configurations_for_{k}_thz_rms"] = int(np.ceil((sig_rms / t) ** 2))
    return {"frequencies": run["final_frequencies"], "frequency_standard_error": stderr,
            "noise_extrapolation": extrap,
            "max_standard_error_thz": float(np.max(np.abs(se_all))) if se_all is not None else None,
            "rms_standard_error_thz": float(np.sqrt(np.mean(se_all**2))) if se_all is not None else None,
            "final_mode_report": (run.get("mode_report") or {}).get("final"),
            "residuals_thz": run["residuals_thz"],
            "n_final_estimates": len(finals), "converged": run["converged"], "n_iterations": run["n_iterations"],
            "last_residual_thz": run["residuals_thz"][-1], "force_call_equivalents": run["force_call_equivalents"],
            "seconds": run["seconds"], "settings": run["settings"]}


def _hit_one_shot(curve: list, key: str, thr: float):
    for i, c in enumerate(curve):
        if all(x[key] <= thr for x in curve[i:]):
            return c
    return None


def summarize_one_shot(runs: dict, ref: dict) -> dict:
    """Per n: median (and spread) of the error over seeds; cost to threshold = smallest n whose median
    error (and that of every larger n) is below it. Top-level fields: max metric; ``*_rms``: RMS metric."""
    by_n: dict[int, list] = {}
    for r in runs.values():
        if "error" in r:
            continue
        by_n.setdefault(r["settings"]["n_configurations"], []).append(r)
    curve = []
    for n in sorted(by_n):
        rs = by_n[n]
        errs = [freq_error(r["final_frequencies"], ref) for r in rs]
        mx, rms = [e["max"] for e in errs], [e["rms"] for e in errs]
        curve.append({"n_configurations": n, "n_seeds": len(rs), "error_max_median_thz": float(np.median(mx)),
                      "error_max_min_thz": float(np.min(mx)), "error_max_max_thz": float(np.max(mx)),
                      "error_rms_median_thz": float(np.median(rms)), "error_rms_min_thz": float(np.min(rms)),
                      "error_rms_max_thz": float(np.max(rms)),
                      "force_call_equivalents": int(np.median([r["force_call_equivalents"] for r in rs])),
                      "force_calls_raw": int(np.median([r["force_calls_raw"] for r in rs])),
                      "hessian_calls": int(np.median([r["hessian_calls"] for r in rs])),
                      "seconds": float(np.mean([r["seconds"] for r in rs]))})
    out = {"curve": curve, "errors": {k: v["error"] for k, v in runs.items() if "error" in v}}
    for metric, suffix in (("max", ""), ("rms", "_rms")):
        for name, thr in THRESHOLDS.items():
            hit = _hit_one_shot(curve, f"error_{metric}_median_thz", thr)
            out[f"force_calls_to_{name}_thz{suffix}"] = hit["force_call_equivalents"] if hit else None
            out[f"seconds_to_{name}_thz{suffix}"] = hit["seconds"] if hit else None
            out[f"n_configurations_to_{name}_thz{suffix}"] = hit["n_configurations"] if hit else None
    if curve:
        best = max(by_n)
        out["final_frequencies"] = by_n[best][0]["final_frequencies"]
        out["final_from"] = f"n_configurations={best}, first seed"
        out["final_error_max_thz"] = curve[-1]["error_max_median_thz"]
        out["final_error_rms_thz"] = curve[-1]["error_rms_median_thz"]
    return out


def _sc_variant(r: dict, ref: dict, output: str, tol_stop: float = 0.05) -> dict:
    fkey = {"estimate": "frequencies", "mixed": "mixed_frequencies", "fixed_point": "fixed_point_frequencies"}[output]
    its = [s for s in r["steps"] if "s" not in s["tag"][2:] and fkey in s]
    curve = []
    for s in its:
        e = freq_error(s[fkey], ref)
        curve.append({"iteration": int(s["tag"][2:]), "error_max_thz": e["max"], "error_rms_thz": e["rms"],
                      "force_call_equivalents": s["force_call_equivalents"],
                      "force_calls_raw": s["force_calls_raw"], "hessian_calls": s["hessian_calls"],
                      "seconds": s["seconds"]})
    v = {"n_configurations": r["settings"]["n_configurations"], "mixing": r["settings"]["mixing"],
         "antithetic": r["settings"]["antithetic"], "policy": r["settings"]["policy"], "output": output,
         "curve": curve,
         "residuals_thz": r.get("residuals_thz"), "error": r.get("error")}
    res = r.get("residuals_thz") or []
    stop = next((i for i, x in enumerate(res) if x < tol_stop), None)
    ok = stop is not None and stop < len(curve)
    v[f"library_stop_iteration_tol_{tol_stop:g}"] = stop
    v[f"library_stop_force_call_equivalents_tol_{tol_stop:g}"] = curve[stop]["force_call_equivalents"] if ok else None
    v[f"library_stop_error_max_thz_tol_{tol_stop:g}"] = curve[stop]["error_max_thz"] if ok else None
    for metric, suffix in (("max", ""), ("rms", "_rms")):
        k = f"error_{metric}_thz"
        for name, thr in THRESHOLDS.items():
            hit = next((c for i, c in enumerate(curve) if all(x[k] <= thr for x in curve[i:])), None)
            first = next((c for c in curve if c[k] <= thr), None)
            v[f"force_calls_to_{name}_thz{suffix}"] = hit["force_call_equivalents"] if hit else None
            v[f"seconds_to_{name}_thz{suffix}"] = hit["seconds"] if hit else None
            v[f"first_force_calls_below_{name}_thz{suffix}"] = first["force_call_equivalents"] if first else None
    if curve:
        v["final_error_max_thz"] = curve[-1]["error_max_thz"]
        v["final_error_rms_thz"] = curve[-1]["error_rms_thz"]
        v["final_frequencies"] = its[-1][fkey]
        v["total_force_call_equivalents"] = curve[-1]["force_call_equivalents"]
        v["total_seconds"] = curve[-1]["seconds"]
    return v


def _seed_group(vs: list) -> dict:
    """Median over seeds of the cost fields of SC variants that differ only by seed (None = ∞)."""
    def med(field):
        x = np.median([np.inf if v.get(field) is None else v[field] for v in vs])
        return None if not np.isfinite(x) else float(x)

    g = {"output": vs[0]["output"], "n_seeds": len(vs), "n_configurations": vs[0]["n_configurations"],
         "mixing": vs[0]["mixing"], "policy": vs[0]["policy"], "errors": [v["error"] for v in vs if v.get("error")]}
    for name in THRESHOLDS:
        for suffix in ("", "_rms"):
            for f in (f"force_calls_to_{name}_thz{suffix}", f"seconds_to_{name}_thz{suffix}"):
                g[f] = med(f)
                g[f + "_per_seed"] = [v.get(f) for v in vs]
    finals = [v for v in vs if v.get("curve")]
    if finals:
        g["final_error_max_thz"] = float(np.median([v["final_error_max_thz"] for v in finals]))
        g["final_error_rms_thz"] = float(np.median([v["final_error_rms_thz"] for v in finals]))
        g["final_frequencies"] = finals[0]["final_frequencies"]
        g["total_force_call_equivalents"] = finals[0]["total_force_call_equivalents"]
    if len(finals) >= 2:
        # precision without the reference: scatter of the final frequencies over the seeds (sample std)
        b = np.std([_branches(v["final_frequencies"]) for v in finals], axis=0, ddof=1)
        g["final_seed_std_max_thz"] = float(np.max(b))
        g["final_seed_std_rms_thz"] = float(np.sqrt(np.mean(b**2)))
    return g


def summarize_sc(runs: dict, ref: dict, primary: str) -> dict:
    """Per run and output (``estimate`` = ⟨H⟩_{Σ(Φ_k)}; ``mixed`` = Φ_{k+1}, what hiPhive returns;
    ``fixed_point`` = the fixed point of the quartic model fitted at iteration k, what a quartic_fit run
    returns if it stops there — ``estimate`` for the other estimators): error after each iteration; cost
    to threshold = first iteration after which the error stays below it for the rest of the run.
    Method-level fields come from the cheapest variant of the ``primary`` output (``*_other_output``: the
    estimate, or the mixed Φ when the primary output is the estimate)."""
    outputs = ("estimate", "mixed", "fixed_point")
    variants = {f"{key}/{o}": _sc_variant(r, ref, o) for key, r in runs.items() for o in outputs}
    out: dict = {"primary_output": primary, "variants": variants}
    # runs repeated with several seeds ('.../seed=N/...') compete as one group: its cost is the median
    # over the seeds (a seed that never reaches the threshold counts as infinite), never the luckiest seed
    groups: dict[str, list] = {}
    for k, v in variants.items():
        base = re.sub(r"/seed=\d+", "", k)
        if base != k:
            groups.setdefault(base, []).append(v)
    seeded = {f"seeds:{base}": _seed_group(vs) for base, vs in groups.items()}
    out["seed_groups"] = seeded
    pool = {**{k: v for k, v in variants.items() if "/seed=" not in k}, **seeded}
    other = "mixed" if primary == "estimate" else "estimate"
    for metric_suffix in ("", "_rms"):
        for name in THRESHOLDS:
            f = f"force_calls_to_{name}_thz{metric_suffix}"
            for o, tag in ((primary, ""), (other, "_other_output")):
                cands = [(v[f], k) for k, v in pool.items() if v["output"] == o and v[f] is not None]
                if cands:
                    _, k = min(cands)
                    out[f + tag] = pool[k][f]
                    sec = f"seconds_to_{name}_thz{metric_suffix}"
                    out[sec + tag] = pool[k][sec]
                    out[f"variant_to_{name}_thz{metric_suffix}{tag}"] = k
                else:
                    out[f + tag] = None
                    out[f"seconds_to_{name}_thz{metric_suffix}{tag}"] = None
    ok = [k for k, v in pool.items() if v.get("final_frequencies") and v["output"] == primary]
    if ok:
        k = min(ok, key=lambda k: pool[k]["final_error_max_thz"])
        out["final_frequencies"] = pool[k]["final_frequencies"]
        out["final_from"] = k
        out["final_error_max_thz"] = pool[k]["final_error_max_thz"]
        out["final_error_rms_thz"] = pool[k]["final_error_rms_thz"]
    return out


def stochastic_reference(runs: dict) -> tuple[dict, dict]:
    """The MLIP reference (two-stage SC force fit, optionally replaced by the converged check run):
    its summary and the frequencies that errors are measured against."""
    ref = reference_summary(runs["reference"])
    if "reference_stage1" in runs:
        r1 = runs["reference_stage1"]
        ref["stage1"] = {"settings": r1["settings"], "force_call_equivalents": r1.get("force_call_equivalents"),
                         "seconds": r1.get("seconds"), "residuals_thz": r1.get("residuals_thz"),
                         "converged": r1.get("converged")}
        ref["total_force_call_equivalents"] = ref["force_call_equivalents"] + (r1.get("force_call_equivalents") or 0)
        ref["total_seconds"] = ref["seconds"] + (r1.get("seconds") or 0)
    chk = runs.get("reference_check")
    if chk and "error" not in chk:
        # an independent long reuse run from Φ⁰: tests whether the reference reached its fixed point
        ref["check"] = {
            "what": "independent long self-consistent force fit with reuse_samples (from Φ⁰, other seed); "
                    "its final frequencies compared with the reference's",
            "settings": chk["settings"], "force_call_equivalents": chk["force_call_equivalents"],
            "seconds": chk["seconds"], "residuals_thz": chk["residuals_thz"],
            "frequencies": chk["final_frequencies"],
            "difference_thz": freq_error(chk["final_frequencies"], ref["frequencies"]),
            "pool": (chk["steps"][-1].get("pool") if chk.get("steps") else None),
        }
    rf = ref["frequencies"]
    ref["scored_against"] = "reference"
    if "check" in ref and ref["check"]["residuals_thz"][-1] < 0.5 * ref["residuals_thz"][-1]:
        # the stage-2 reference stopped far from its fixed point (3 iterations): its last residual is
        # several times the check run's, so errors are measured against the converged check run
        c = ref["check"]
        errs = chk.get("errors") or {}
        rf = c["frequencies"]
        ref["scored_against"] = "check"
        ref["scored_reason"] = (f"last SC residual of the reference {ref['residuals_thz'][-1]:.3f} THz vs "
                                f"{c['residuals_thz'][-1]:.3f} THz for the check run (pool of "
                                f"{(c.get('pool') or {}).get('n_configurations')} configurations)")
        ref["reference_stage2_frequencies"] = ref["frequencies"]
        ref["frequencies"] = rf
        ref["reference_stage2_max_standard_error_thz"] = ref["max_standard_error_thz"]
        ref["reference_stage2_rms_standard_error_thz"] = ref["rms_standard_error_thz"]
        ref["max_standard_error_thz"] = errs.get("max_frequency_error_thz")
        ref["rms_standard_error_thz"] = None
        ref["standard_error_method"] = errs.get("method")
    return ref, rf


def summarize_methods(runs: dict, rf: dict) -> dict:
    """Every method that has runs, scored against the reference frequencies ``rf``."""
    methods = {}
    for m in METHODS:
        mr = {k.split("/", 1)[1]: v for k, v in runs.items() if k.startswith(m + "/")}
        if not mr:
            continue
        if m.endswith(("one_shot", "at_fixed_point")):
            methods[m] = summarize_one_shot(mr, rf)
        else:
            # quartic_fit runs made since the fixed-point output return the model's fixed point
            ok = [r for r in mr.values() if "error" not in r]
            fp = bool(ok) and all(any("fixed_point_frequencies" in st for st in r["steps"]) for r in ok)
            methods[m] = summarize_sc(mr, rf, "mixed" if m == "hiphive_style_sc" else
                                      "fixed_point" if m.startswith("quartic_fit") and fp else "estimate")
    return methods


def summarize(entry: dict) -> None:
    runs = entry.get("runs", {})
    if "exact_reference" in entry:
        ref = dict(entry["exact_reference"])
        rf = ref["frequencies"]
    elif "reference" in runs and "error" not in runs["reference"]:
        ref, rf = stochastic_reference(runs)
    else:
        return
    entry["reference"] = ref
    methods = summarize_methods(runs, rf)
    _goal_fields(methods)
    entry["methods"] = methods
    entry["methods_not_run"] = [m for m in METHODS if m in entry.get("plan", {}) and m not in methods]
    precise_reference(entry, ref)


def _goal_fields(methods: dict) -> None:
    """Cost as a fraction of the hiPhive-style anchor (and of the measured loop); the issue's goal flag."""
    hip = methods.get("hiphive_style_sc", {})
    for d in methods.values():
        for suffix in ("", "_rms"):
            for name in THRESHOLDS:
                c = d.get(f"force_calls_to_{name}_thz{suffix}")
                d[f"fraction_of_hiphive_anchor_{name}{suffix}"] = c / ANCHORS["hiphive_style_30x50"] if c else None
                hc = hip.get(f"force_calls_to_{name}_thz{suffix}")
                d[f"fraction_of_hiphive_measured_{name}{suffix}"] = c / hc if c and hc else None
            c = d.get(f"force_calls_to_0p05_thz{suffix}")
            d[f"meets_goal_0p05_at_le_150_calls{suffix}"] = bool(c is not None and c <= 150)


#: method fields re-scored against the precise reference
_PRECISE_FIELDS = [f"{f}_{n}_thz{s}" for s in ("", "_rms") for n in THRESHOLDS
                   for f in ("force_calls_to", "seconds_to", "variant_to")] + [
    f"{f}{s}" for s in ("", "_rms") for f in ("meets_goal_0p05_at_le_150_calls", "fraction_of_hiphive_anchor_0p05")] + [
    "primary_output", "final_error_max_thz", "final_error_rms_thz", "final_from"]


def precise_reference(entry: dict, ref: dict) -> None:
    """The quartic-fit reference (``reference_quartic``), its agreement with the force-fit reference, and the
    cost to threshold of every method scored against it (``methods_vs_precise_reference``)."""
    runs = entry.get("runs", {})
    run, stage2 = runs.get("reference_quartic_polish"), runs.get("reference_quartic")
    if not run or "error" in run or not stage2 or "error" in stage2 or "exact_reference" in entry:
        return
    pr = reference_summary(run)
    moved = _branches(run["final_frequencies"]) - _branches(stage2["final_frequencies"])
    fp = run["settings"].get("quartic_output", "estimate") == "fixed_point"
    pr["output"] = ("fixed points of the quartic models fitted at the final Σ (one per seed), averaged" if fp else
                    "⟨H⟩ at the final Σ (one Picard step), averaged over the seeds")
    step = ("the fixed points of the models fitted at Σ(Φ₂)" if fp else "one step ⟨H⟩_{Σ(Φ₂)}")
    pr["convergence"] = {
        "what": f"polish ({step} from stage 2's final Φ₂, mean of the seeds) minus stage 2's final; "
                "a fixed point moves by statistical noise only (about √2 × the standard error)",
        "max_abs_shift_thz": float(np.max(np.abs(moved))), "rms_shift_thz": float(np.sqrt(np.mean(moved**2))),
        "stage2_max_standard_error_thz": reference_summary(stage2)["max_standard_error_thz"],
    }
    d = _branches(ref["frequencies"]) - _branches(pr["frequencies"])
    se_ref = ref.get("max_standard_error_thz")
    pr["agreement_with_reference"] = {
        "what": "force-fit reference (scored_against) minus this reference, Γ/X/M/R branches",
        "max_abs_difference_thz": float(np.max(np.abs(d))), "rms_difference_thz": float(np.sqrt(np.mean(d**2))),
        "reference_max_standard_error_thz": se_ref,
        "within_2_reference_standard_errors": bool(se_ref is not None and np.max(np.abs(d)) <= 2 * se_ref),
    }
    entry["precise_reference"] = pr
    vs = summarize_methods(runs, pr["frequencies"])
    _goal_fields(vs)
    entry["methods_vs_precise_reference"] = {m: {k: r.get(k) for k in _PRECISE_FIELDS if k in r} for m, r in vs.items()}


# --------------------------------------------------------------------------------------------
# Hessian routes (M3GNet)
# --------------------------------------------------------------------------------------------
def hessian_routes(pot, atoms, repeats: int) -> dict:
    import torch

    from tdphonon.potentials import fd_hessians

    out: dict = {"n_atoms": len(atoms), "repeats": repeats, "torch_threads": torch.get_num_threads()}

    def timed(fn):
        ts, h = [], None
        for _ in range(repeats):
            t = time.perf_counter()
            h = fn()
            ts.append(time.perf_counter() - t)
        return np.asarray(h, dtype=float), ts

    h_auto, t_auto = timed(lambda: pot.hessians([atoms])[0])
    out["autograd_MatglPotential.hessians"] = {"seconds": t_auto, "note": "row-by-row double backward, symmetrised"}
    h_fd, t_fd = timed(lambda: fd_hessians(pot, [atoms], delta=0.01)[0])
    out["finite_differences_fd_hessians"] = {"seconds": t_fd, "delta_A": 0.01, "force_calls": 6 * len(atoms),
                                             "note": "central differences, batched force calls, symmetrised"}
    mpot = pot.model
    old = (mpot.calc_hessian, mpot.calc_stresses)
    from matgl.ext.ase import Atoms2Graph

    conv = Atoms2Graph(mpot.model.element_types, float(mpot.model.cutoff))

    def matgl_h():
        g, lat, st = conv.get_graph(atoms)
        mpot.calc_hessian, mpot.calc_stresses = True, False
        try:
            return mpot(g, lat, st)[3].detach().cpu().double().numpy()
        finally:
            mpot.calc_hessian, mpot.calc_stresses = old

    h_mg, t_mg = timed(matgl_h)
    out["matgl_calc_hessian"] = {"seconds": t_mg, "note": "matgl.apps.pes.Potential(calc_hessian=True), "
                                 "row-by-row double backward, not symmetrised"}
    h_mg_s = 0.5 * (h_mg + h_mg.T)
    scale = float(np.max(np.abs(h_mg_s)))

    def rel(a, b):
        return float(np.max(np.abs(a - b)) / scale)

    out["agreement"] = {
        "metric": "max|H_a - H_b| / max|H_matgl| (symmetrised Hessians, eV/Å²)",
        "max_abs_hessian": scale,
        "autograd_vs_matgl": rel(h_auto, h_mg_s),
        "fd_vs_matgl": rel(h_fd, h_mg_s),
        "fd_vs_autograd": rel(h_fd, h_auto),
        "matgl_asymmetry": float(np.max(np.abs(h_mg - h_mg.T)) / scale),
        "tolerance": 1e-5,
    }
    a = out["agreement"]
    a["autograd_vs_matgl_within_tolerance"] = a["autograd_vs_matgl"] <= 1e-5
    a["fd_vs_matgl_within_tolerance"] = a["fd_vs_matgl"] <= 1e-5
    m = float(np.median(t_mg))
    out["speedup_vs_matgl_calc_hessian"] = {"autograd": m / float(np.median(t_auto)),
                                            "finite_differences": m / float(np.median(t_fd))}
    return out


# --------------------------------------------------------------------------------------------
# driver
# --------------------------------------------------------------------------------------------
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--potentials", nargs="*", default=["m3gnet", "chgnet"])
    ap.add_argument("--methods", nargs="*", default=METHODS, help="subset of methods to run")
    ap.add_argument("--quick", action="store_true", help="tiny settings (pipeline check); separate output file")
    ap.add_argument("--out", default=None)
    ap.add_argument("--fresh", action="store_true", help="ignore runs already in --out")
    ap.add_argument("--ref-configs", type=int, default=None)
    ap.add_argument("--hiphive-iterations", type=int, default=None)
    ap.add_argument("--hessian-sc-iterations", type=int, default=None)
    ap.add_argument("--hessian-repeats", type=int, default=1)
    ap.add_argument("--no-routes", action="store_true", help="skip the Hessian-route timings")
    ap.add_argument("--reference-check", action="store_true",
                    help="also run an independent long SC reuse run and compare it with the reference")
    ap.add_argument("--retry-errors", action="store_true", help="rerun runs stored with an error")
    ap.add_argument("--no-precise-reference", action="store_true",
                    help="skip the quartic-fit precise reference (reference_quartic)")
    ap.add_argument("--plot-only", action="store_true", help="re-summarise --out and redraw the plot")
    ap.add_argument("--merge", nargs="+", default=None, metavar="FILE",
                    help="merge the potentials of these result files (runs written with --out elsewhere, e.g. in "
                         "parallel) into --out, then re-summarise and redraw")
    args = ap.parse_args(argv)
    keys = [next(k for k in POTENTIALS if pname in (k, POTENTIALS[k]) or pname.lower() in k.lower())
            for pname in args.potentials]
    names = {RESULT_NAMES.get(POTENTIALS[k], "tdph_cost") for k in keys}
    if len(names) > 1 and not args.out:
        ap.error(f"these potentials write to different files ({', '.join(sorted(names))}.json): run them separately")
    name = names.pop()
    out = Path(args.out or OUT / (f"{name}_quick.json" if args.quick else f"{name}.json"))
    out.parent.mkdir(parents=True, exist_ok=True)
    results = {} if args.fresh else load_results(out)
    results.setdefault("potentials", {})
    for f in args.merge or []:
        results["potentials"].update(load_results(Path(f)).get("potentials", {}))
    if args.plot_only or args.merge:
        for e in results["potentials"].values():
            summarize(e)
        finish(results, out, plot=True)
        report(results)
        return 0

    for key in keys:
        run_potential(args, results, out, key)
    finish(results, out, plot=True)
    report(results)
    return 0


def run_potential(args, results: dict, out: Path, key: str) -> None:
    """Harmonic Φ⁰, reference, Hessian routes and every planned method for one potential."""
    from tdphonon.harmonic import HarmonicSettings, harmonic_phonons
    from tdphonon.pipeline import named_qpoints
    from tdphonon.potentials import LOAD_SECONDS, load_potential

    n_sc = SUPERCELLS.get(key, 2)
    surrogate = ifc_surrogate(n_sc) if POTENTIALS[key].startswith("ifc") else None
    pot = surrogate["potential"] if surrogate else load_potential(POTENTIALS[key], device="cpu")
    entry = results["potentials"].setdefault(key, {})
    entry.setdefault("runs", {})
    hs = HarmonicSettings(relax=False, supercell_matrix=(n_sc,) * 3, projected_dos=False, band_npoints=11,
                          mesh=(8, 8, 8))
    t = time.perf_counter()
    c0 = pot.force_calls
    harm = harmonic_phonons(surrogate["structure"] if surrogate else CIF, pot, hs, label="SrTiO3")
    qpts = {k: v for k, v in named_qpoints(harm.properties).items() if k in ("Gamma", "X", "M", "R")}
    bench = Bench(key, pot, harm, qpts)
    entry["model"] = pot.identity.to_dict()
    entry["load_seconds"] = surrogate["seconds"] if surrogate else LOAD_SECONDS.get((POTENTIALS[key], "cpu"))
    if surrogate:
        entry["model"]["fit"] = surrogate["fit"].to_dict()
    entry["harmonic"] = {
        "structure": (f"the PBEsol cell of ../shared/reference/alamode/SrTiO3 (a = {harm.structure.lattice.a:.4f} Å), "
                      "Pm-3m" if surrogate else
                      f"examples/SrTiO3.cif, no relaxation (a = {harm.structure.lattice.a:.4f} Å), Pm-3m"),
        "supercell": f"{n_sc}x{n_sc}x{n_sc}", "n_atoms": bench.natom, "displacement_A": hs.displacement,
        "force_calls": pot.force_calls - c0, "seconds": time.perf_counter() - t, "qpoints": qpts,
        "frequencies": bench.named(np.asarray(harm.phonon.force_constants)),
        "n_basis_symmetric_fc": bench.projector.n_basis, "analytic_hessian": bench.analytic_hessian,
        "same_phi0_for_all_methods": True,
    }
    p = plan(args, key)
    entry["plan"] = p

    def save():
        summarize(entry)
        finish(results, out, plot=False)

    def do(run_key: str, settings, start=None):
        if run_key in entry["runs"] and not (args.retry_errors and "error" in entry["runs"][run_key]):
            return
        t = time.perf_counter()
        entry["runs"][run_key] = bench.run(settings, start_force_constants=start)
        r = entry["runs"][run_key]
        print(f"{key:24s} {run_key:44s} {r.get('force_call_equivalents', '-')!s:>7s} calls-eq "
              f"{time.perf_counter() - t:7.1f} s {r.get('error', '')}", flush=True)
        save()

    def do_sc(run_key: str, **kw):
        """Default policy first; if sampling blows up (SamplingError: displacement cap, or
        UnphysicalForcesError: energy outliers), record it and rerun with REF_POLICY."""
        do(run_key, tdph_settings(self_consistent=True, tol_thz=1e-6, n_blocks_for_error=1, **kw))
        err = str(entry["runs"][run_key].get("error", ""))
        if "SamplingError" in err or "UnphysicalForcesError" in err:
            do(run_key + "/policy=abs1.5", tdph_settings(self_consistent=True, tol_thz=1e-6, n_blocks_for_error=1,
                                                       policy=REF_POLICY, **kw))

    if surrogate:
        if "exact_reference" not in entry:
            entry["exact_reference"] = exact_reference(surrogate, bench)
            save()
    else:
        mlip_reference(args, entry, bench, harm, p, do, save, key)
    for m in args.methods:
        if m not in p:
            continue
        q = p[m]
        seeds = q.get("seeds")

        def tagged(run_key: str, sd: int, seeds=seeds) -> str:
            return f"{run_key}/seed={sd}" if seeds else run_key

        if m.endswith(("one_shot", "at_fixed_point")):
            est = m.removesuffix("_one_shot").removesuffix("_at_fixed_point")
            start = None
            if m.endswith("at_fixed_point"):
                if surrogate is None:
                    continue
                start = exact_force_constants(surrogate, bench)
            # at the fixed point: one self-consistent iteration from the exact Φ(T) returns the estimate at
            # Σ(Φ(T)) (a one-shot run always samples Σ(Φ⁰))
            at_fp = {} if start is None else dict(self_consistent=True, max_iterations=1, tol_thz=1e-6)
            for n, seed in q["runs"]:
                do(f"{m}/n={n}/seed={seed}", tdph_settings(estimator=est, n_configurations=n, seed=seed,
                                                           n_blocks_for_error=1, **at_fp), start=start)
        elif m == "hiphive_style_sc":
            for sd in seeds or [100]:
                do_sc(tagged(f"{m}/n={q['n']}/mixing={q['mixing']}", sd), estimator="force_fit",
                      n_configurations=q["n"], antithetic=False, mixing=q["mixing"], max_iterations=q["max_it"],
                      seed=sd)
        else:
            # quartic_fit_sc[_shells1|_shells3|_reuse] jump to the fitted model's fixed point (mixing only
            # damps its inner SCPH): their run keys carry no mixing
            quartic = m.startswith("quartic_fit")
            est = "quartic_fit" if quartic else m.removesuffix("_reuse").removesuffix("_sc")
            extra = {"quartic_shells": q["shells"]} if "shells" in q else {}
            for n in q["ns"]:
                for sd in seeds or [200]:
                    run_key = f"{m}/n={n}" if quartic else f"{m}/n={n}/mixing={q['mixing']}"
                    do_sc(tagged(run_key, sd), estimator=est, n_configurations=n, mixing=q["mixing"],
                          max_iterations=q["max_it"], seed=sd, reuse_samples=m.endswith("_reuse"), **extra)
    save()


def ifc_surrogate(n: int = 2) -> dict:
    """The SrTiO3 PBEsol Φ₂ + Φ₃ + Φ₄ (validation_SrTiO3.dft_ifcs) as a ForceConstantPotential on the
    n×n×n supercell, with its cell, phonopy object, projector and Φ₄ contraction.

    n = 2 is the DFT supercell itself. For n > 2, Φ₃/Φ₄ come from the fitted hiPhive cluster
    expansion (cutoffs well inside the larger cell) and Φ₂ from the DFT 2x2x2 dynamical matrices
    Fourier-interpolated to the n×n×n commensurate q-points (phonopy DynmatToForceConstants), then
    symmetry- and sum-rule-projected: a well-defined potential, which is all an exact reference needs.
    """
    from phonopy.harmonic.dynmat_to_fc import DynmatToForceConstants
    from validation_SrTiO3 import dft_ifcs, dft_primitive, taylor_potential

    from tdphonon.harmonic import make_phonopy, supercell_atoms
    from tdphonon.renormalize import phonopy_with_force_constants
    from tdphonon.sampling import FCProjector
    from tdphonon.validation.scph import QuarticContraction

    d = dict(dft_ifcs())
    t0 = time.perf_counter()
    if n != 2:
        ph2 = phonopy_with_force_constants(d["phonon"], d["fc2"])
        ph = make_phonopy(dft_primitive(), np.diag([n, n, n]), primitive_matrix=None)
        d2f = DynmatToForceConstants(ph.primitive, ph.supercell)
        dms = []
        for q in d2f.commensurate_points:
            ph2.dynamical_matrix.run(q)
            dms.append(ph2.dynamical_matrix.dynamical_matrix)
        d2f.dynamical_matrices = np.asarray(dms)
        d2f.run()
        proj = FCProjector.from_phonopy(ph)
        ideal = supercell_atoms(ph)
        ifcs = d["fit"].force_constants(ideal)
        d.update(phonon=ph, projector=proj, fc2=proj.project(np.asarray(d2f.force_constants)), ideal=ideal,
                 ifcs=ifcs, quartic=QuarticContraction.from_hiphive(ifcs), fc3=None)
        ph.force_constants = np.ascontiguousarray(d["fc2"])
    pot = taylor_potential(d["ideal"], d["fc2"], d["ifcs"], name=f"SrTiO3-PBEsol-IFC-{n}x{n}x{n}")
    return {**d, "n": n, "potential": pot, "structure": dft_primitive(),
            "seconds": d["seconds"] + time.perf_counter() - t0}


def exact_reference(sur: dict, bench) -> dict:
    """The exact fixed point of the surrogate: for a Φ₂+Φ₃+Φ₄ Taylor potential ⟨∂²V⟩ over N(0, Σ) is
    Φ₂ + ½Φ₄:Σ (the cubic term averages out), so the self-consistent TDPH limit is the SCPH solution
    on the supercell's commensurate q-points, computed deterministically (no sampling)."""
    from tdphonon.sampling import ModeAmplitudePolicy
    from tdphonon.validation.pipeline import named_frequencies
    from tdphonon.validation.scph import scph

    ph = sur["phonon"]
    policy = ModeAmplitudePolicy(**REF_POLICY)
    t0 = time.perf_counter()
    r = scph(ph.supercell, ph.primitive, sur["fc2"], sur["quartic"], TEMPERATURE, mixing=0.3, tol_thz=1e-6,
             max_iterations=5000, projector=sur["projector"], policy=policy)
    sur["exact_fc"] = r.force_constants
    freqs = named_frequencies(ph, r.force_constants, bench.qpoints)
    phi0 = freq_error(bench.named(bench.fc0), named_frequencies(ph, sur["fc2"], bench.qpoints))
    # the policy acts on the commensurate modes (Σ): the fixed point is policy-free when all of them
    # (but the 3 translations) are above its threshold
    comm = np.sort(np.abs(np.asarray(r.frequencies_thz, dtype=float)).reshape(-1))[3:]
    lowest = float(comm[0])
    return {
        "what": "exact SCHA fixed point of the Taylor potential: SCPH (Φ = Φ₂ + ½Φ₄:Σ(Φ)) on the commensurate "
                f"q-points of the {sur['n']}x{sur['n']}x{sur['n']} supercell with the same projector and soft-mode "
                "policy as the TDPH runs",
        "frequencies": freqs, "frequency_standard_error": None, "max_standard_error_thz": 0.0,
        "rms_standard_error_thz": 0.0, "converged": r.converged, "n_iterations": r.n_iterations,
        "last_residual_thz": r.max_change_thz, "lowest_commensurate_mode_thz": lowest, "policy": REF_POLICY,
        "policy_independent": bool(lowest > policy.threshold_thz),
        "phi0_fd_vs_dft_fc2_thz": phi0, "force_call_equivalents": 0, "seconds": time.perf_counter() - t0,
    }


def exact_force_constants(sur: dict, bench) -> np.ndarray:
    """The exact Φ(T) of the surrogate in the atom order of the benchmark's supercell."""
    from tdphonon.harmonic import supercell_atoms

    if "exact_fc" not in sur:
        exact_reference(sur, bench)
    # the surrogate's reference supercell is in the order of its phonopy object (that of exact_fc)
    perm, _ = sur["potential"].displacements(supercell_atoms(bench.phonon))  # bench atom i = its atom perm[i]
    return np.asarray(sur["exact_fc"])[np.ix_(perm, perm)]


def mlip_reference(args, entry: dict, bench, harm, p: dict, do, save, key: str) -> None:
    """Stochastic reference (two stages), Hessian-route timings and the optional check run of an MLIP."""
    from tdphonon.harmonic import supercell_atoms

    r1, r = p["reference_stage1"], p["reference"]
    if "reference" not in entry["runs"] or "error" in entry["runs"]["reference"]:
        entry["runs"].pop("reference_stage1", None)  # stage 2 needs stage 1's Φ: redo both
        entry["runs"].pop("reference", None)
    # "abs" with a 1.5 THz threshold: the SC transient drives the R/M soft modes through zero, where the
    # default 0.5 THz threshold lets the amplitudes grow past the displacement cap (a first attempt raised
    # SamplingError; "floor" at 1 THz instead *enlarges* the -2.5 THz R/M modes at iteration 0 and gave
    # energy outliers); the fixed point is unchanged as long as the converged modes are above 1.5 THz
    # (checked in reference.final_mode_report)
    do("reference_stage1", tdph_settings(estimator="force_fit", n_configurations=r1["n"], self_consistent=True,
                                         mixing=r1["mixing"], tol_thz=1e-6, max_iterations=r1["max_it"],
                                         n_blocks_for_error=1, seed=12345, policy=REF_POLICY))
    if bench.last_force_constants is not None:
        do("reference", tdph_settings(estimator="force_fit", n_configurations=r["n"], self_consistent=True,
                                      mixing=r["mixing"], tol_thz=1e-6, max_iterations=r["max_it"],
                                      n_seeds_for_error=r["seeds"], seed=54321, policy=REF_POLICY),
           start=bench.last_force_constants)
    if not args.no_routes and bench.analytic_hessian and "hessian_routes" not in entry:
        rng = np.random.default_rng(7)
        atoms = supercell_atoms(harm.phonon)
        atoms.positions += rng.normal(0.0, 0.05, atoms.positions.shape)
        print(f"{key:24s} Hessian routes ...", flush=True)
        entry["hessian_routes"] = hessian_routes(bench.pot, atoms, args.hessian_repeats)
        hr = entry["hessian_routes"]
        print(json.dumps(hr["agreement"]), hr["speedup_vs_matgl_calc_hessian"], flush=True)
        save()
    if "reference_quartic" in p and not args.no_precise_reference:
        # the precise reference: the model-based estimator with many configurations and independent seeds
        # (docs/methods.md: quartic_fit has the same large-sample limit as force_fit, whatever the model's
        # truncation, with a several times smaller per-configuration spread)
        # stage 1 (reuse, from Φ⁰) → stage 2 (n per iteration, jumps; the final Φ is the mean of `seeds`
        # independent estimates) → polish: one more step ⟨H⟩_{Σ(Φ₂)} from stage 2's low-noise Φ₂ with as many
        # seeds. The polish is the reference; how far it moves from Φ₂ measures the convergence. Stage 2's Φ₂
        # is not stored, so a missing polish reruns all three (fixed seeds: stages 1 and 2 come out the same)
        q = p["reference_quartic"]
        keys = ("reference_quartic_stage1", "reference_quartic", "reference_quartic_polish")
        if any(k not in entry["runs"] or "error" in entry["runs"][k] for k in keys):
            for k in keys:
                entry["runs"].pop(k, None)
        do(keys[0], tdph_settings(estimator="quartic_fit", n_configurations=q["n1"], self_consistent=True,
                                  tol_thz=1e-6, max_iterations=q["it1"], reuse_samples=True, n_blocks_for_error=1,
                                  seed=2468, policy=REF_POLICY))
        if bench.last_force_constants is not None:
            do(keys[1], tdph_settings(estimator="quartic_fit", n_configurations=q["n"], self_consistent=True,
                                      tol_thz=1e-6, max_iterations=q["max_it"], n_seeds_for_error=q["seeds"],
                                      seed=97531, policy=REF_POLICY),
               start=bench.last_force_constants)
        if bench.last_force_constants is not None:
            do(keys[2], tdph_settings(estimator="quartic_fit", n_configurations=q["n"], self_consistent=True,
                                      tol_thz=1e-6, max_iterations=1, n_seeds_for_error=q["seeds"], seed=13579,
                                      policy=REF_POLICY),
               start=bench.last_force_constants)
    if args.reference_check and "reference" in entry["runs"]:
        rc = p["reference_check"]
        do("reference_check", tdph_settings(estimator="force_fit", n_configurations=rc["n"], self_consistent=True,
                                            mixing=rc["mixing"], tol_thz=1e-6, max_iterations=rc["max_it"],
                                            reuse_samples=True, seed=777, policy=REF_POLICY))


def report(results: dict) -> None:
    for key, e in results["potentials"].items():
        ref = e.get("reference")
        if not ref:
            continue
        print(f"\n{key}: reference ({ref['force_call_equivalents']} calls, {ref['seconds']:.0f} s, "
              f"max s.e. {ref['max_standard_error_thz']}) ")
        for k, f in ref["frequencies"].items():
            print(f"  {k:6s} " + " ".join(f"{x:6.2f}" for x in f))
        for m, d in e.get("methods", {}).items():
            print(f"  {m:20s} calls→0.05 {d.get('force_calls_to_0p05_thz')!s:>6s}  calls→0.1 "
                  f"{d.get('force_calls_to_0p1_thz')!s:>6s}  s→0.05 {d.get('seconds_to_0p05_thz')}  "
                  f"final max err {d.get('final_error_max_thz')}")


def load_results(out: Path) -> dict:
    """The result file with the runs of each potential merged back from its ``runs_file``."""
    if not out.exists():
        return {}
    results = json.loads(out.read_text())
    for e in results.get("potentials", {}).values():
        f = e.pop("runs_file", None)
        if f and (out.parent / f).exists():
            e["runs"] = json.loads((out.parent / f).read_text())["runs"]
    return results


def finish(results: dict, out: Path, plot: bool) -> None:
    from _common import write_result

    results["description"] = __doc__.strip().splitlines()[0]
    results["method"] = {
        "material": "SrTiO3 Pm-3m, examples/SrTiO3.cif, no relaxation (same Φ⁰ for all methods of one potential)",
        "supercell": "2x2x2 (40 atoms); harmonic Φ⁰ by phonopy finite displacements 0.01 Å",
        "not_measured": "on the 3x3x3 cell with CHGNet (CHGNet-0.3.0-3x3x3, ~2 s per 135-atom force call on "
                        "one CPU core) only the smallest plan: no Hessian methods (6N = 810 force calls per "
                        "finite-difference Hessian), no hiPhive-style loop, one seed for the one-shot sweeps. "
                        "CHGNet hessian_sc: 2 iterations only (finite-difference Hessians, 240 force calls each)",
        "temperature_K": TEMPERATURE,
        "statistics": "quantum (Bose-Einstein) amplitudes for every method, hiPhive-style included",
        "mode_policy": "default ModeAmplitudePolicy (kind='abs', threshold 0.5 THz) for every method; a "
                       "self-consistent run whose sampling blows up (SamplingError or UnphysicalForcesError: the "
                       "mixed Φ_k drives a soft mode through ~0 THz, where 'abs' amplitudes diverge) is stored with "
                       "its error and partial curve and rerun with kind='abs', threshold_thz=1.5 as variant "
                       "'.../policy=abs1.5'. The "
                       "reference uses that policy throughout (same fixed point when the converged modes are above "
                       "1.5 THz: see reference.final_mode_report). kind='floor' (1 THz) was tried first for the "
                       "reference and gave energy outliers at iteration 0 (it raises the -2.5 THz R/M modes' "
                       "amplitudes to those of 1 THz modes)",
        "qpoints": "Γ, X, M, R (exactly commensurate with the 2x2x2 supercell)",
        "error_metric": "max |ν − ν_ref| (THz) over all branches at Γ, X, M, R, the 3 acoustic Γ modes excluded, "
                        "bands matched by sorted order (fields without suffix); the RMS over the same 57 values "
                        "is reported in the fields with suffix _rms",
        "cost_convention": "force_call_equivalents = force calls + 6N = 240 per analytic (autograd) Hessian; "
                           "finite-difference Hessians (CHGNet) already are 240 force calls each. Every "
                           "configuration also costs one force call (outlier screening) in the hessian estimator. "
                           "Raw force_calls_raw and hessian_calls are stored with every run (potential counters, "
                           "differenced around each run)",
        "cost_to_threshold_one_shot": "smallest n_configurations whose median error over the seeds (and that of "
                                      "every larger n) is ≤ threshold; cost and mean wall time at that n",
        "cost_to_threshold_self_consistent": "first iteration after which the error of the estimate ⟨H⟩_{Σ(Φ_k)} "
                                             "(what renormalize returns when it stops after iteration k) stays ≤ "
                                             "threshold for the rest of the run; cumulative cost and wall time; the "
                                             "cheapest variant (n per iteration) is reported at method level. One "
                                             "trajectory per variant (no seed average)",
        "self_consistent_runs": "tol_thz tiny so that every run does max_iterations; "
                                "library_stop_* gives where tol 0.05 THz would have stopped it",
        "reference_check": "independent self-consistent force fit with reuse_samples from Φ⁰ (32 configurations per "
                           "iteration, 40 iterations, other seed); when the stage-2 reference's last residual is more "
                           "than twice the check run's, every error is measured against the check run "
                           "(reference.scored_against / scored_reason; reference.check.difference_thz gives how far "
                           "the stage-2 reference was from it)",
        "reference": "self-consistent force fit (antithetic pairs, mixing 0.4) in two stages: stage 1 from Φ⁰ with "
                     "fewer configurations, stage 2 warm-started from stage 1's Φ(T) with many configurations; "
                     "final Φ = mean of n_seeds_for_error independent estimates at the final Σ; standard error "
                     "from those seeds (see plan and reference.max_standard_error_thz)",
        "hiphive_style_sc": "force_fit, 30 independent (non-antithetic) configurations per iteration, mixing "
                            "α = 0.2, 50 iterations (hiPhive self-consistent phonon tutorial), symfc fit",
        "sc_reuse": "force_fit_sc_reuse / hessian_sc_reuse: the same SC iteration with reuse_samples=True — each "
                    "estimate uses the configurations of all earlier iterations whose effective sample size for "
                    "the current Σ is ≥ 30 %, importance-reweighted (balance heuristic); the recorded estimate is "
                    "the pooled one (steps[].pool gives its size and effective sample size)",
        "surrogates": "tdph_cost_surrogate.json / tdph_cost_surrogate_3x3x3.json: the same methods on "
                      "SrTiO3-PBEsol-IFC-Taylor / -3x3x3, the "
                      "PBEsol DFT Φ₂ with the hiPhive-fitted Φ₃/Φ₄ of benchmarks/validation_SrTiO3.py as an exact "
                      "Taylor potential (tdphonon.analytic.ForceConstantPotential, ~10 ms per 40-atom force call, "
                      "exact Hessians counted as 6N force calls like autograd ones) on the DFT cell (a = 3.896 Å). Its "
                      "self-consistent fixed point is known exactly: SCPH Φ = Φ₂ + ½Φ₄:Σ(Φ) on the commensurate "
                      "q-points (exact_reference; the cubic term averages out of ⟨∂²V⟩), so errors carry no reference "
                      "noise. Self-consistent variants run with 3 seeds; method-level costs are the median over seeds "
                      "(a seed that never reaches the threshold counts as infinite: seed_groups). "
                      "force_fit_at_fixed_point / hessian_at_fixed_point: one estimate at Σ of the exact Φ(T) with n "
                      "configurations — the sampling noise alone, a lower bound on the cost of any self-consistent "
                      "scheme built on that estimator. The surrogate's sha256 depends on the BLAS thread count (last "
                      "bits of the least-squares IFC fit); these runs used OMP_NUM_THREADS=1",
        "quartic_fit": "quartic_fit_*: estimator='quartic_fit' (tdphonon.taylor): Φ₂ (symfc basis) + Φ₄ (hiPhive "
                       "cluster space, 2 neighbour shells unless _shells1/_shells3) least-squares fitted to the odd "
                       "forces [F(u) − F(−u)]/2 of the ± pairs; ⟨H⟩_Σ = Φ₂ + ½Φ₄:Σ in closed form; each SC iteration "
                       "jumps to the SCPH fixed point of the fitted model (no force calls), so no 'mixed' output; "
                       "their primary output is 'fixed_point': the fixed point of the model fitted at iteration k, "
                       "what renormalize returns (quartic_output='fixed_point') if it stops there ('estimate', "
                       "⟨H⟩ at Σ(Φ_k), kept as the other output). "
                       "On the surrogates the 2- and 3-shell models contain the true potential (its Φ₄ has 2 "
                       "shells): exact by construction, their cost is that of determining the fit; the 1-shell "
                       "model measures truncation error on a known answer. _reuse: pooled, reweighted "
                       "configurations of the earlier iterations in every fit",
        "precise_reference": (
            "reference_quartic_polish (MLIPs): quartic_fit, self-consistent, in three stages (stage 1 from Φ⁰ with "
            "reuse; stage 2 warm-started from it, n per iteration, n_seeds_for_error independent seeds at the final "
            "Σ; polish: one step from stage 2's final Φ with as many seeds; plan.reference_quartic; every stage "
            "returns the fixed point of its fitted models, quartic_output='fixed_point'), policy as the "
            "reference; precise_reference.convergence gives how far the polish moved from stage 2. quartic_fit has "
            "the same large-sample limit as force_fit whatever the quartic model lacks (on the same samples it is "
            "the force fit plus a control variate with a closed-form mean: docs/methods.md), with a several times "
            "smaller per-configuration spread, so this reference is several times more precise for the same cost. "
            "precise_reference.agreement_with_reference compares it with the force-fit reference; "
            "methods_vs_precise_reference re-scores every method against it (the method-level fields stay scored "
            "against the force-fit reference)"),
        "anchors_force_calls": ANCHORS,
        "goal": "0.05 THz at ≤ 1/10 of the hiPhive-style cost (≤ 150 force calls)",
        "wall_time": "CPU, 1 torch thread (2 for the force-fit runs of M3GNet-MP-2021.2.8-PES-3x3x3), nice, other "
                     "jobs (benchmarks, a fine-tuning run) sharing the 2 cores: timings are indicative",
    }
    # per-step frequencies of every run: compact, 6 significant digits (1e-5 THz and below), one file per
    # potential in <out>_runs/ so that every file stays < 2 MB; the main file keeps the summaries
    runs_dir = out.with_name(out.stem + "_runs")
    summary = {**results, "potentials": {}}
    for key, e in results.get("potentials", {}).items():
        summary["potentials"][key] = {k: v for k, v in e.items() if k != "runs"}
        if e.get("runs"):
            runs_dir.mkdir(exist_ok=True)
            summary["potentials"][key]["runs_file"] = f"{runs_dir.name}/{key}.json"
            write_result({"potential": key, "runs": e["runs"]}, runs_dir / f"{key}.json", compact=True,
                         significant_digits=6)
    write_result(summary, out, compact=True, significant_digits=6)
    if plot:
        plot_cost(results, out.with_suffix(".png"))


def _seed_curves(method: dict, metric: str) -> dict[str, tuple[list[float], np.ndarray]]:
    """Error curves of the primary output of a self-consistent method, grouped over seeds by variant.

    Returns ``{variant (seed removed): (force calls, errors[seed, iteration])}``; the curves of a group are
    cut to the shortest one (a seed that converged earlier stops earlier).
    """
    groups: dict[str, list[list[tuple[float, float]]]] = {}
    for vk, v in method["variants"].items():
        if v["output"] != method["primary_output"] or not v.get("curve") or v.get("error"):
            continue
        label = "/".join(part for part in vk.removesuffix("/" + v["output"]).split("/")
                         if not part.startswith("seed="))
        groups.setdefault(label, []).append([(p["force_call_equivalents"], p[f"error_{metric}_thz"])
                                             for p in v["curve"]])
    out = {}
    for label, cs in groups.items():
        n = min(len(c) for c in cs)
        out[label] = ([x for x, _ in cs[0][:n]], np.array([[y for _, y in c[:n]] for c in cs]))
    return out


def plot_cost(results: dict, path: Path) -> None:
    """Error vs force calls (log-log): rows max / RMS metric, one column per potential. Self-consistent runs:
    the primary output (estimate for tdphonon, the model's fixed point for quartic_fit, mixed Φ for hiPhive-style)
    of every variant that finished,
    the median over its seeds with the min–max range shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pots = {k: v for k, v in results["potentials"].items() if v.get("methods")}
    if not pots:
        return
    fig, axes = plt.subplots(2, len(pots), figsize=(6.0 * len(pots) if len(pots) > 1 else 11.0, 11.0),
                             squeeze=False)
    colors = {"hessian_one_shot": "C0", "force_fit_one_shot": "C1", "hessian_sc": "C2", "force_fit_sc": "C3",
              "hiphive_style_sc": "C4", "force_fit_sc_reuse": "C5", "hessian_sc_reuse": "C6",
              "force_fit_at_fixed_point": "C7", "hessian_at_fixed_point": "C8", "quartic_fit_one_shot": "C9",
              "quartic_fit_sc": "k", "quartic_fit_sc_shells1": "0.45",
              "quartic_fit_sc_shells1_long": "0.3", "quartic_fit_sc_shells3": "0.7",
              "quartic_fit_sc_reuse": "m"}
    styles = ["-", "--", ":", "-."]
    for col, (key, e) in enumerate(pots.items()):
        ref = e.get("reference", {})
        for row, metric in enumerate(("max", "rms")):
            ax = axes[row][col]
            for m, d in e["methods"].items():
                if m.endswith(("one_shot", "at_fixed_point")):
                    c = d["curve"]
                    if not c:
                        continue
                    x = [p["force_call_equivalents"] for p in c]
                    y = [p[f"error_{metric}_median_thz"] for p in c]
                    lo = [p[f"error_{metric}_median_thz"] - p[f"error_{metric}_min_thz"] for p in c]
                    hi = [p[f"error_{metric}_max_thz"] - p[f"error_{metric}_median_thz"] for p in c]
                    ax.errorbar(x, y, yerr=[lo, hi], marker="o", ms=4, color=colors[m], capsize=2,
                                label=f"{m} (median, range over seeds)")
                else:
                    # one line per variant: the median over its seeds at each iteration, shaded min–max
                    for i, (label, curves) in enumerate(_seed_curves(d, metric).items()):
                        x, ys = curves
                        med = np.median(ys, axis=0)
                        ax.plot(x, med, styles[i % len(styles)], marker=".", ms=3, lw=1, color=colors[m],
                                label=f"{m} {label} ({d['primary_output']}"
                                      f"{f', median of {len(ys)} seeds' if len(ys) > 1 else ''})")
                        if len(ys) > 1:
                            ax.fill_between(x, np.min(ys, axis=0), np.max(ys, axis=0), color=colors[m], alpha=0.12,
                                            lw=0)
            for thr in THRESHOLDS.values():
                ax.axhline(thr, color="k", lw=0.8, ls="--")
            se = ref.get(f"{metric}_standard_error_thz")
            if se:
                ax.axhline(se, color="grey", lw=0.8, ls="-.", label="reference standard error")
            for name, x in ANCHORS.items():
                if name == "paper_single_hessian_fd":  # 6N force calls: 240 on the 40-atom cell
                    x = 6 * e.get("harmonic", {}).get("n_atoms", 40)
                ax.axvline(x, color="grey", lw=0.8, ls=":")
                ax.text(x, 0.02, name, rotation=90, va="bottom", ha="right", fontsize=7, color="grey",
                        transform=ax.get_xaxis_transform())
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel(f"force calls (Hessian = 6N = {6 * e.get('harmonic', {}).get('n_atoms', 40)})")
            ax.set_ylabel(f"{metric} |Δν| at Γ, X, M, R vs reference (THz)")
            ax.set_title(f"{key}: SrTiO3 {e.get('harmonic', {}).get('supercell', '2x2x2')}, {TEMPERATURE:g} K "
                         f"({metric})", fontsize=9)
    # one legend for all panels, below them (labels shared by the potentials appear once)
    handles: dict[str, object] = {}
    for ax in axes.flat:
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(lab, h)
    ncol = 4 if len(pots) > 1 else 2
    fig.legend(list(handles.values()), list(handles), loc="lower center", ncol=ncol, fontsize=6.5, frameon=False)
    fig.tight_layout(rect=(0, 0.03 + 0.0135 * -(-len(handles) // ncol), 1, 1))
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    sys.exit(main())
