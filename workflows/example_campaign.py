#!/usr/bin/env python
"""Example campaign definition: per-family settings, then submit (or run locally).

    python workflows/example_campaign.py structures/ --campaign perovskites \\
        [--launchpad my_launchpad.yaml --store jobflow.yaml | --local runs/]
"""

from __future__ import annotations

import argparse

from tdphonon.campaign import load_launchpad, load_store, local_store, read_inputs, run_local, submit
from tdphonon.flows import TDPhononMaker


def makers(campaign: str, model: str) -> dict[str, TDPhononMaker]:
    """Settings per structure family: small cells get a larger supercell and more configurations."""
    common = {"model": model, "temperatures": (300.0, 600.0), "campaign": campaign}
    return {
        "small": TDPhononMaker(**common, harmonic_settings={"min_length": 12.0},
                               tdph_settings={"n_configurations": 64}),
        "large": TDPhononMaker(**common, harmonic_settings={"min_length": 10.0, "max_atoms": 200},
                               tdph_settings={"n_configurations": 32}),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("inputs")
    ap.add_argument("--campaign", required=True)
    ap.add_argument("--model", default="default")
    ap.add_argument("--launchpad")
    ap.add_argument("--store")
    ap.add_argument("--local")
    args = ap.parse_args()
    mats, skipped = read_inputs(args.inputs)
    for s in skipped:
        print(f"skipped {s['label']}: {s['reason']}")
    by_family = makers(args.campaign, args.model)
    for family, maker in by_family.items():
        group = [m for m in mats if (len(m.structure) <= 5) == (family == "small")]
        if args.local:
            rep = run_local(group, maker, local_store(args.local))
        else:
            rep = submit(group, maker, load_launchpad(args.launchpad), load_store(args.store))
        print(f"{family}: {len(rep.submitted)} submitted, {len(rep.duplicates)} duplicates, {len(rep.failed)} failed")


if __name__ == "__main__":
    main()
