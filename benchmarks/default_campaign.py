#!/usr/bin/env python
"""Benchmark: a campaign with every default on the DFT reference structures (not a test).

What a user gets from ``tdphonon campaign FOLDER`` without options (SevenNet-0, one-shot force fit of
32 quantum-thermal configurations at 300 K, the automatic supercell of at least 10 Å and at most 260
atoms, |ν| policy) on real crystals of several chemistries: the unit cells of the phonopy sets in
``../shared/reference`` (:data:`SETS`; relaxed with the space group fixed). Per material: done or
failed (with the reason), supercell size, R_full, max R_onsite, frequency shift, harmonic and 300 K
lowest frequencies, imaginary harmonic modes, wall time. It measures how often the defaults fail
and why, the robustness counterpart of the accuracy benchmarks.

Writes ``benchmarks/results/default_campaign.json``; about 20 min on 2 CPU cores.

    python benchmarks/default_campaign.py [--model default] [--work DIR]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
SHARED = Path(os.environ.get("TDPHONON_SHARED", ROOT.parent / "shared"))
#: label -> phonopy file (or folder holding one) under ../shared/reference/phonopy
SETS = {
    "Al2O3": "example/Al2O3", "CaTiO3": "example/CaTiO3", "Cr": "example/Cr", "MgB2": "example/MgB2",
    "MgO": "example/MgO", "Si": "test/phonopy_params_Si.yaml", "SiO2-HP": "example/SiO2-HP",
    "SnO2": "test/phonopy_disp_SnO2.yaml", "TiPN3": "test/phonopy_params_TiPN3.yaml.xz", "ZnO": "example/ZnO",
    "Zr3N4": "test/phonopy_params_Zr3N4.yaml",
}


def write_inputs(folder: Path) -> dict[str, str]:
    """One POSCAR per set (its phonopy unit cell); returns label -> source file."""
    import phonopy

    from tdphonon.structures import from_phonopy_atoms

    folder.mkdir(parents=True, exist_ok=True)
    sources = {}
    for label, rel in SETS.items():
        path = SHARED / "reference" / "phonopy" / rel
        if path.is_dir():
            path = sorted(path.glob("phonopy*.yaml*"))[0]
        ph = phonopy.load(str(path), log_level=0, produce_fc=False, primitive_matrix="P")
        from_phonopy_atoms(ph.unitcell).to(filename=str(folder / f"{label}.vasp"), fmt="poscar")
        sources[label] = str(path.relative_to(SHARED))
    return sources


def main(argv=None) -> int:
    from _common import write_result

    from tdphonon import campaign as cmp
    from tdphonon.cli import _maker
    from tdphonon.renormalize import TDPHSettings

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="default")
    ap.add_argument("--work", default=None, help="folder for inputs and the store (default: a temporary one)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "default_campaign.json"))
    args = ap.parse_args(argv)
    work = Path(args.work or tempfile.mkdtemp(prefix="default_campaign_"))
    sources = write_inputs(work / "inputs")
    mats, skipped = cmp.read_inputs(work / "inputs")
    # the maker of `tdphonon campaign FOLDER -c default_campaign` with every other option at its default
    maker = _maker(args.model, [300.0], "force_fit", False, 32, "abs", 0, True, None, "default_campaign")
    ts = TDPHSettings.from_dict(maker.tdph_settings)
    store = cmp.local_store(work / "store")
    seconds: dict[str, float] = {}
    current: list = [None, 0.0]  # the material running and its start (run_local reports each start)

    def progress(label, k, n):
        now = time.perf_counter()
        if current[0] is not None:
            seconds[current[0]] = now - current[1]
        current[:] = [label, now] if k < n else [None, now]  # the last call reports the end
        print(f"{k}/{n} done" + (f", starting {label}" if k < n else ""), flush=True)

    t0 = time.perf_counter()
    rep = cmp.run_local(mats, maker, store, progress=progress)
    wall = time.perf_counter() - t0
    if current[0] is not None:
        seconds[current[0]] = time.perf_counter() - current[1]
    rows = {r["label"]: r for r in cmp.rows(cmp.query(store, campaign="default_campaign"), 300.0)}
    docs = {d["label"]: d for d in cmp.query(store, campaign="default_campaign")}
    materials = []
    for m in mats:
        rec = {"label": m.label, "source": sources.get(m.label), "seconds": seconds.get(m.label)}
        if m.label in rows:
            r, h = rows[m.label], (docs[m.label].get("harmonic") or {}).get("imaginary") or {}
            rec.update(status="done", n_atoms_supercell=r["n_atoms_supercell"], spacegroup=r["spacegroup"],
                       r_full=r["r_full"], r_onsite_max=r["r_onsite_max"], frequency_shift=r["frequency_shift"],
                       min_frequency_thz_300K=r["min_frequency_thz"],
                       harmonic_min_frequency_thz=h.get("min_frequency"),
                       harmonic_n_imaginary_commensurate=h.get("n_imaginary_commensurate"),
                       policy_dependent=(docs[m.label]["temperatures"][0].get("mode_report") or {}).get(
                           "policy_dependent"))
        else:
            fail = next((f for f in rep.failed if f["label"] == m.label), None)
            rec.update(status="failed", reason=fail["reason"] if fail else "not in the store")
        materials.append(rec)
    res = {"description": __doc__.strip().splitlines()[0], "model": maker.model, "temperature_K": 300.0,
           "tdph_settings": ts.to_dict(), "n_materials": len(mats),
           "n_done": sum(r["status"] == "done" for r in materials),
           "n_failed": sum(r["status"] == "failed" for r in materials), "skipped_inputs": skipped,
           "wall_seconds": wall, "materials": materials}
    write_result(res, Path(args.out))
    for r in materials:
        print(r["label"], r["status"], r.get("r_onsite_max") if r["status"] == "done" else r["reason"][:160])
    print(f"{res['n_done']} done, {res['n_failed']} failed in {wall:.0f} s -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
