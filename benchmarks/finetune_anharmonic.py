#!/usr/bin/env python
"""Benchmark: does harmonic fine-tuning keep the base model's anharmonicity? (not a test)

The shipped fine-tunes get SrTiO3's temperature dependence wrong (docs/finetune.md): the base
M3GNet hardens the R soft mode from −2.57 THz (harmonic) to +2.53 THz at 600 K, the fine-tunes keep
it imaginary or soften it. Hypothesis: F = −Φu data teach only curvature, and nothing holds the
model's higher-order terms in place. Test on the four cubic-perovskite sets of ``../shared/reference``
(the data of ``finetune_modes.py``), same base model, seed, learning rate and epochs:

* ``modes``: 10 random + 10 mode-weighted configurations per set (the control, 0.01–0.05 Å);
* ``modes_thermal_harmonic``: + 10 thermal configurations at 300 K (quantum Σ of Φ_DFT, |ν| and at
  least 1.5 THz for the soft and imaginary modes, as in the TDPH runs) labelled F = −Φ_DFT u (the
  harmonic surface at thermal amplitudes);
* ``modes_thermal_base``: the same configurations labelled −Φ_DFT u + R_base(u), the base model's
  anharmonic remainder (:func:`tdphonon.finetune.dataset.anharmonic_remainder`): the DFT curvature
  with the base model's higher-order forces;
* ``modes_thermal4_base``: the same with 4 thermal configurations per set (less weight on the
  large-amplitude forces against the small-amplitude curvature).

Each model: frequency MAE per set, soft modes at Γ/X/M/R, and TDPH of SrTiO3 on the DFT cell with
the settings of ``validation_SrTiO3.py`` (Γ-TO1, R at 0/100/300/600 K; outlier forces are recorded,
then the run is repeated with ``drop_outliers=True``). Writes ``benchmarks/results/finetune_anharmonic.json``.

    python benchmarks/finetune_anharmonic.py [--epochs 12] [--variants modes_thermal_base modes ...]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
OUT = ROOT / "benchmarks" / "results" / "finetune_anharmonic.json"
_MODES = {"n_random": 10, "n_modes": 10}
VARIANTS = {"modes_thermal_base": {**_MODES, "temperatures": (300.0,), "n_thermal": 10,
                                   "thermal_labels": "base_anharmonic"},
            "modes": _MODES,
            "modes_thermal_harmonic": {**_MODES, "temperatures": (300.0,), "n_thermal": 10},
            "modes_thermal4_base": {**_MODES, "temperatures": (300.0,), "n_thermal": 4,
                                    "thermal_labels": "base_anharmonic"}}


def srtio3_tdph(potential, n_configurations: int) -> dict:
    """Γ-TO1 / R (THz) of SrTiO3 from TDPH on the DFT cell; a failed run is recorded, then rerun without outliers."""
    import validation_SrTiO3 as val

    col, failure, diagnosis = val.dft_cell_columns(potential, n_configurations)
    out: dict = {"failed": failure} if failure else {}
    if diagnosis and "failed" in diagnosis:
        out["failed_with_outliers_dropped"] = diagnosis["failed"]
    col = col or (diagnosis if diagnosis and "failed" not in diagnosis else None)
    if col:
        sc = col["self_consistent"]
        out.update({"outliers_dropped": failure is not None, "gamma_to1_thz": sc["gamma_to1_thz"],
                    "r_soft_thz": sc["r_soft_thz"], "one_shot_300K": val.at_300k(col["one_shot"]),
                    "outliers": {k: col[k]["outliers_dropped"] for k in col}})
    return out


def main(argv=None) -> int:
    import json

    import finetune_modes as fm
    from _common import write_result

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--n-configurations", type=int, default=32)
    ap.add_argument("--work", default=None)
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args(argv)
    import warnings

    warnings.filterwarnings("ignore")
    from tdphonon.finetune.sources import read_reference_collection
    from tdphonon.potentials import load_potential

    base = str(fm.SHARED / "models" / "M3GNet-MP-2021.2.8-PES")
    rep = read_reference_collection(fm.SHARED / "reference", skip_larger_than=200)
    entries = [e for e in rep.entries if e.label in fm.PEROVSKITES]
    if sorted(e.label for e in entries) != sorted(fm.PEROVSKITES):
        raise SystemExit(f"perovskite sets not found in {fm.SHARED / 'reference'}: {[e.label for e in entries]}")
    work = Path(args.work or tempfile.mkdtemp(prefix="tdphonon-finetune-anharmonic-"))
    base_pot = load_potential(base, device="cpu")
    committed = json.loads((ROOT / "benchmarks" / "results" / "validation_SrTiO3.json").read_text())
    ref_cols = {name: {k: committed["ml_comparison"][name]["self_consistent"][k]
                       for k in ("gamma_to1_thz", "r_soft_thz")}
                for name in ("M3GNet-MP-2021.2.8-PES", "SevenNet-0") if name in committed["ml_comparison"]}
    result = {"description": __doc__.strip().splitlines()[0], "base_model": base_pot.identity.to_dict(),
              "epochs": args.epochs, "sets": list(fm.PEROVSKITES),
              "srtio3_reference": {"what": "self-consistent TDPH, DFT cell, settings of validation_SrTiO3.py; "
                                           "DFT SCPH on the same 2x2x2 q-points at 300 K",
                                   **ref_cols, "dft_harmonic": {k: committed["dft"][k]["harmonic"]
                                                                for k in ("gamma_to1_thz", "r_soft_thz")},
                                   "dft_scph_2x2x2_300K": committed["engine_check_thz_300K"]["scph_commensurate"]},
              "variants": {}}
    out = Path(args.out)
    if out.is_file():  # keep variants computed by an earlier call
        result["variants"] = json.loads(out.read_text()).get("variants", {})
    from tdphonon.sampling import ModeAmplitudePolicy

    for name in args.variants:
        st = dict(VARIANTS[name])
        if st.get("n_thermal"):  # the soft-mode treatment of the TDPH runs (validation_SrTiO3.tdph_settings)
            st["policy"] = ModeAmplitudePolicy(kind="abs", threshold_thz=1.5)
        v = fm.run_variant(name, entries, base, args.epochs, work, settings=st,
                           base_potential=base_pot if st.get("thermal_labels") == "base_anharmonic" else None)
        pot = load_potential(v.pop("model_dir"), device="cpu", cache=False)
        v["srtio3_tdph"] = srtio3_tdph(pot, args.n_configurations)
        result["variants"][name] = v
        write_result(result, out)  # a partial run is kept
        t = v["srtio3_tdph"]
        print(name, {k: round(x["mae_thz"], 3) for k, x in v["per_set"].items()},
              "R", {k: round(x, 2) for k, x in t.get("r_soft_thz", {}).items()}, t.get("failed", ""), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
