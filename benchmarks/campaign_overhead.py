#!/usr/bin/env python
"""Benchmark: orchestration overhead of a FireWorks campaign (not a test).

Starts a SecantusDB server (MongoDB wire protocol; set TDPHONON_BENCH_MONGODB=host:port to use a
real MongoDB), submits N small materials (5–40-atom supercells, CHGNet, one temperature), runs them
with 1 and then 2 `rlaunch rapidfire` worker processes, and compares:

* compute: seconds measured inside the jobs (model load on a worker's first job included);
* rocket: FireWorks launch run times (compute + jobflow reference resolution + store writes);
* worker: wall time x workers (adds process start, launchpad polling, idle).

overhead_fraction = (rocket - compute) / compute: the per-job DB + FireWorks + jobflow cost.
total_overhead_fraction = (worker - compute) / compute also counts process start-up and idling.
Writes benchmarks/results/campaign_overhead.json.

    python benchmarks/campaign_overhead.py [--n 20] [--workers 1 2]
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "campaign_overhead.json"
BIN = Path(sys.executable).parent

# (label, spacegroup, a, species, coords): rocksalt / CsCl / fluorite / diamond / perovskite cells
PROTOTYPES = {
    "rocksalt": ("Fm-3m", [[0, 0, 0], [0.5, 0.5, 0.5]]),
    "cscl": ("Pm-3m", [[0, 0, 0], [0.5, 0.5, 0.5]]),
    "diamond": ("Fd-3m", [[0, 0, 0]]),
    "fcc": ("Fm-3m", [[0, 0, 0]]),
    "bcc": ("Im-3m", [[0, 0, 0]]),
    "perovskite": ("Pm-3m", [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0]]),
}
MATERIALS = [
    ("NaCl", "rocksalt", 5.64, ["Na", "Cl"]), ("KCl", "rocksalt", 6.29, ["K", "Cl"]),
    ("MgO", "rocksalt", 4.21, ["Mg", "O"]), ("LiF", "rocksalt", 4.03, ["Li", "F"]),
    ("NaF", "rocksalt", 4.63, ["Na", "F"]), ("KBr", "rocksalt", 6.60, ["K", "Br"]),
    ("CaO", "rocksalt", 4.81, ["Ca", "O"]), ("LiCl", "rocksalt", 5.13, ["Li", "Cl"]),
    ("CsCl", "cscl", 4.12, ["Cs", "Cl"]), ("CsBr", "cscl", 4.29, ["Cs", "Br"]),
    ("Si", "diamond", 5.43, ["Si"]), ("Ge", "diamond", 5.66, ["Ge"]), ("C", "diamond", 3.57, ["C"]),
    ("Al", "fcc", 4.05, ["Al"]), ("Cu", "fcc", 3.61, ["Cu"]), ("Ag", "fcc", 4.09, ["Ag"]),
    ("Ni", "fcc", 3.52, ["Ni"]), ("W", "bcc", 3.17, ["W"]), ("Mo", "bcc", 3.15, ["Mo"]),
    ("Na", "bcc", 4.23, ["Na"]), ("SrTiO3", "perovskite", 3.905, ["Sr", "Ti", "O"]),
    ("BaTiO3", "perovskite", 4.00, ["Ba", "Ti", "O"]),
]


def structures(n: int):
    from pymatgen.core import Lattice, Structure

    from tdphonon.campaign import MaterialInput

    out = []
    for label, proto, a, species in MATERIALS[:n]:
        sg, coords = PROTOTYPES[proto]
        if proto == "perovskite":
            s = Structure(Lattice.cubic(a), [*species, "O", "O"],
                          [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])
        else:
            s = Structure.from_spacegroup(sg, Lattice.cubic(a), species, coords).get_primitive_structure()
        out.append(MaterialInput(label, s, proto))
    return out


def run(n: int, workers: int, root: Path, host: str, port: int) -> dict:
    from tdphonon.campaign import failures, load_launchpad, load_store, status, submit
    from tdphonon.flows import TDPhononMaker

    db = f"bench_{workers}w"
    lp_file = root / f"lp_{workers}.yaml"
    lp_file.write_text(f"host: {host}\nport: {port}\nname: {db}_fw\n")
    jf = root / f"jobflow_{workers}.yaml"
    jf.write_text("JOB_STORE:\n"
                  f"  docs_store: {{type: MongoStore, database: {db}, host: {host}, port: {port}, "
                  "collection_name: outputs}\n  additional_stores:\n"
                  f"    data: {{type: GridFSStore, database: {db}, host: {host}, port: {port}, "
                  "collection_name: outputs_blobs}\n")
    lp = load_launchpad(lp_file)
    lp.reset("", require_password=False)
    store = load_store(jf)
    maker = TDPhononMaker(model="chgnet", temperatures=(300.0,), campaign="bench",
                          harmonic_settings={"relax": False, "standardize": False, "supercell_matrix": [2, 2, 2],
                                             "mesh": [8, 8, 8], "band_npoints": 21},
                          tdph_settings={"n_configurations": 16, "estimator": "force_fit", "cap_mode": "clip"})
    mats = structures(n)
    t0 = time.perf_counter()
    rep = submit(mats, maker, lp, store)
    t_submit = time.perf_counter() - t0
    env = dict(os.environ, JOBFLOW_CONFIG_FILE=str(jf), TDPHONON_DEVICE="cpu", HF_HUB_OFFLINE="1",
               OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    t0 = time.perf_counter()
    procs = []
    for k in range(workers):
        d = root / f"w{workers}_{k}"
        d.mkdir()
        procs.append(subprocess.Popen(
            [str(BIN / "rlaunch"), "-l", str(lp_file), "-w", str(ROOT / "my_fworker.yaml"), "rapidfire",
             "--max_loops", "1", "--sleep", "1"], cwd=d, env=env, stdout=open(d / "log", "w"),
            stderr=subprocess.STDOUT))
    for p in procs:
        p.wait()
    wall = time.perf_counter() - t0
    st = status(lp, "bench")["bench"]
    store.connect()
    compute = 0.0
    doc_sizes = []
    for d in store.query({"metadata.tdphonon_campaign": "bench"}):
        t = d["output"].get("timings", {}) if isinstance(d["output"], dict) else {}
        step = d["metadata"].get("tdphonon_step")
        key = {"harmonic phonons": "harmonic", "sampling": "sampling", "force constants": "force_constants",
               "metrics": "metrics"}[step]
        compute += float(t.get(key, 0.0))
        if step == "metrics":
            doc_sizes.append(len(json.dumps(d, default=str).encode()))
    rocket = sum(float(la.get("runtime_secs") or 0.0) for la in lp.launches.find({}, {"runtime_secs": 1}))
    n_done = st["materials"].get("COMPLETED", 0)
    return {
        "workers": workers, "n_materials": len(mats), "n_completed": n_done, "submitted": len(rep.submitted),
        "submit_seconds": t_submit, "wall_seconds": wall, "compute_seconds": compute,
        "rocket_seconds": rocket, "worker_seconds": wall * workers,
        "compute_seconds_per_material": compute / max(n_done, 1),
        "overhead_seconds_per_material": (rocket - compute) / max(n_done, 1),
        "overhead_fraction": (rocket - compute) / compute if compute else None,
        "total_overhead_fraction": (wall * workers - compute) / compute if compute else None,
        "materials_per_hour": 3600.0 * n_done / wall, "max_document_bytes": max(doc_sizes, default=0),
        "mean_document_bytes": sum(doc_sizes) / max(len(doc_sizes), 1), "states": st,
        "failures": [{k: f[k] for k in ("label", "name", "reason")} for f in failures(lp, "bench")],
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=20)
    ap.add_argument("--workers", type=int, nargs="*", default=[1, 2])
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args(argv)
    from tdphonon.potentials import hardware_info, package_versions
    from tdphonon.testing import Server

    root = Path(tempfile.mkdtemp(prefix="tdphonon-bench-"))
    server = None
    if os.environ.get("TDPHONON_BENCH_MONGODB"):
        host, port = os.environ["TDPHONON_BENCH_MONGODB"].rsplit(":", 1)
    else:
        server = Server(root)
        server.start()
        host, port = "127.0.0.1", server.port
    try:
        runs = []
        for w in args.workers:
            r = run(args.n, w, root, host, int(port))
            print(json.dumps({k: v for k, v in r.items() if k != "states"}), flush=True)
            runs.append(r)
    finally:
        if server:
            server.stop()
    summary = {
        "description": __doc__.strip().splitlines()[0],
        "n_materials": args.n, "workers": args.workers,
        "overhead_fraction": max(r["overhead_fraction"] for r in runs),
        "total_overhead_fraction": {str(r["workers"]): r["total_overhead_fraction"] for r in runs},
        "materials_per_hour": {str(r["workers"]): r["materials_per_hour"] for r in runs},
        "max_document_bytes": max(r["max_document_bytes"] for r in runs),
        "runs": runs,
        "server": f"SecantusDB {importlib.metadata.version('SecantusDB')}" if server else "MongoDB (external)",
        "settings": "CHGNet 0.3.0 on CPU, 2x2x2 supercells of primitive cells (8-40 atoms), no relaxation, "
                    "force_fit one-shot, 16 configurations, 300 K",
        "note": "2-core machine: two workers share both cores with BLAS single-threaded; on GPU nodes "
                "compute per job shrinks and overhead_fraction grows accordingly",
        "packages": package_versions(), "hardware": hardware_info("cpu"), "date": time.strftime("%Y-%m-%d"),
    }
    Path(args.out).write_text(json.dumps(summary, indent=1))
    print(f"overhead {summary['overhead_fraction']:.3f}, materials/hour {summary['materials_per_hour']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
