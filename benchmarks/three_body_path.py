#!/usr/bin/env python
"""Diagnostic: how much M3GNet's three-body path contributes, in the base model and in fine-tuned ones (not a test).

For each matgl M3GNet model given (default: the base M3GNet-MP-2021.2.8-PES of ../shared/models):

* the biases of the sigmoid atom gates of the three-body blocks (``update_network_atom``);
* per block, the relative change the three-body update makes to the bond features of the first
  neighbour shell, ‖Δe‖₁/‖e‖₁, in diamond Si, rocksalt MgO and NaCl (bonds whose three-body cutoff
  weight is at least half the largest one);
* the harmonic phonons of the DFT Si set (``phonopy_params_Si``, its own supercell and commensurate
  q-points, :func:`tdphonon.evaluation.compare_with_reference`) with the three-body path as it is and
  switched off (every block returns its input bond features): frequency MAE against DFT and the
  highest frequency (Γ optical);
* the Si phonons with the three-body indices mapped as matgl's DGL-era line graph did (``"pruned"``:
  line-graph node ids are the ids of the bonds inside the three-body cutoff, renumbered from 0, yet they
  index the per-bond cutoff weights, neighbour atoms and the scatter over all bonds);
* for the base model only, the same Si phonons and the forces of rattled (0.03 Å) 2×2×2 supercells
  of Si, MgO, NaCl with the gate biases set to 0 (``FineTuneSettings.three_body_gate_bias = 0``),
  against the unchanged model: what opening the gates costs before any training.

Writes ``benchmarks/results/three_body_path.json``.

    python benchmarks/three_body_path.py [--models DIR ...] [--out FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("TDPHONON_SHARED", ROOT.parent / "shared"))
BASE = SHARED / "models" / "M3GNet-MP-2021.2.8-PES"
OUT = ROOT / "benchmarks" / "results" / "three_body_path.json"
SI_SET = SHARED / "reference" / "phonopy" / "test" / "phonopy_params_Si.yaml"


def crystals():
    """Rattled 2×2×2 conventional cells (seeded): covalent, ionic oxide, ionic halide."""
    from ase.build import bulk

    rng = np.random.default_rng(0)
    out = {}
    for name, at in (("Si", bulk("Si", "diamond", a=5.43, cubic=True)),
                     ("MgO", bulk("MgO", "rocksalt", a=4.25, cubic=True)),
                     ("NaCl", bulk("NaCl", "rocksalt", a=5.64, cubic=True))):
        at = at * (2, 2, 2)
        at.positions += rng.normal(0.0, 0.03, at.positions.shape)
        out[name] = at
    return out


@contextlib.contextmanager
def three_body(mode: str, record: list | None = None):
    """Patch matgl's ThreeBodyInteractions: ``"off"`` returns the input bond features; ``"record"`` appends
    each block's first-shell relative update ‖Δe‖₁/‖e‖₁ to ``record``; ``"pruned"`` emulates the index
    mapping of the DGL-era line graph (pruned-bond ids used as all-bond ids)."""
    import matgl.layers._three_body as tbm
    import torch
    from matgl.utils.maths import scatter_sum

    orig = tbm.ThreeBodyInteractions.forward

    def off(self, *args):
        return args[-1]

    def rec(self, edge_dst_atom, line_edge_index, n_triple_ij, num_bonds, three_basis, three_cutoff, node_feat,
            edge_feat):
        out = orig(self, edge_dst_atom, line_edge_index, n_triple_ij, num_bonds, three_basis, three_cutoff,
                   node_feat, edge_feat)
        first = three_cutoff >= 0.5 * three_cutoff.max()
        record.append(float((out - edge_feat)[first].abs().sum() / edge_feat[first].abs().sum()))
        return out

    def pruned(self, edge_dst_atom, line_edge_index, n_triple_ij, num_bonds, three_basis, three_cutoff, node_feat,
               edge_feat):
        # bonds inside the three-body cutoff (weight > 0), renumbered 0..n-1 as the pruned graph did
        inside = torch.nonzero(three_cutoff > 0).reshape(-1)
        renum = torch.full((num_bonds,), -1, dtype=torch.long, device=inside.device)
        renum[inside] = torch.arange(len(inside), device=inside.device)
        ij, ik = renum[line_edge_index[0].long()], renum[line_edge_index[1].long()]
        atoms = self.update_network_atom(node_feat)[edge_dst_atom[ik].long()]
        basis = three_basis * atoms * (three_cutoff[ij] * three_cutoff[ik])[:, None]
        new = scatter_sum(basis.to(edge_feat.dtype), segment_ids=ij, num_segments=num_bonds, dim=0)
        return edge_feat + self.update_network_bond(new)

    tbm.ThreeBodyInteractions.forward = {"off": off, "record": rec, "pruned": pruned}[mode]
    try:
        yield
    finally:
        tbm.ThreeBodyInteractions.forward = orig


def si_phonons(pot, ref) -> dict:
    from tdphonon.evaluation import compare_with_reference

    c = compare_with_reference(ref, pot)
    return {"mae_thz": c.mae_thz, "max_frequency_thz": c.max_frequency_ml_thz}


def measure(spec: str, ref, cells, opened: bool) -> dict:
    from tdphonon.finetune.train import _set_three_body_gate_bias
    from tdphonon.potentials import load_potential

    pot = load_potential(spec, device="cpu", cache=False)
    model = pot.model.model
    res: dict = {"model": pot.identity.to_dict(),
                 "gate_bias_mean": [float(b.update_network_atom.layers[0].bias.mean())
                                    for b in model.three_body_interactions],
                 "first_shell_relative_update": {}}
    for name, at in cells.items():
        rec: list = []
        with three_body("record", rec):
            pot.forces([at])
        res["first_shell_relative_update"][name] = rec
    res["si_phonons"] = {"three_body_on": si_phonons(pot, ref)}
    with three_body("off"):
        res["si_phonons"]["three_body_off"] = si_phonons(pot, ref)
    with three_body("pruned"):
        res["si_phonons"]["three_body_pruned_indices"] = si_phonons(pot, ref)
    if opened:
        f0 = {n: pot.forces([a])[0] for n, a in cells.items()}
        _set_three_body_gate_bias(model, 0.0, pot.identity.name)  # this potential is not used afterwards
        res["gates_opened"] = {
            "si_phonons": si_phonons(pot, ref),
            "force_change_mae_ev_a": {n: float(np.abs(pot.forces([a])[0] - f0[n]).mean()) for n, a in cells.items()},
            "force_mae_scale_ev_a": {n: float(np.abs(f0[n]).mean()) for n in cells},
        }
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="*", default=[], help="fine-tuned matgl M3GNet directories to add")
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args(argv)
    if not SI_SET.exists() or not BASE.exists():
        print(f"needs {SI_SET} and {BASE}", file=sys.stderr)
        return 1
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from _common import write_result

    from tdphonon.evaluation import load_reference

    t0 = time.perf_counter()
    ref = load_reference(SI_SET)
    cells = crystals()
    results: dict = {"description": __doc__.strip().splitlines()[0], "reference": str(SI_SET.name), "models": {}}
    for i, spec in enumerate([str(BASE), *args.models]):
        m = measure(spec, ref, cells, opened=i == 0)
        results["models"][m["model"]["name"] + ("" if i == 0 else f" ({Path(spec).parent.name})")] = m
        print(m["model"]["name"], m["si_phonons"], flush=True)
    results["seconds"] = time.perf_counter() - t0
    write_result(results, Path(args.out))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
