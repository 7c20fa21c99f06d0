"""Submitting / running the validation branch for many materials and writing its outputs.

Inputs are any material list :func:`tdphonon.campaign.read_inputs` accepts — in particular the
screening export of ``tdphonon analyze`` (``candidates/candidates.json``). The ML result of each
material (for the comparison) is looked up by label in an ML campaign's job store.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from tdphonon.campaign import MaterialInput, SubmitReport, query
from tdphonon.validation.flows import VALIDATION_STEP, ValidationMaker

__all__ = ["ml_documents", "run_validation_local", "submit_validation", "validation_results",
           "write_validation_outputs"]


def ml_documents(store, labels: Iterable[str], campaign: str | None = None) -> dict[str, dict]:
    """The ML campaign's documents (with arrays) of ``labels``, by label (missing labels left out)."""
    out = {}
    for lab in labels:
        docs = query(store, load_arrays=True, campaign=campaign, label=lab)
        if docs:
            out[lab] = docs[0]
    return out


def submit_validation(materials: Iterable[MaterialInput], maker: ValidationMaker, launchpad,
                      ml_docs: Mapping[str, dict] | None = None) -> SubmitReport:
    """One validation workflow per material on ``launchpad`` (reference jobs on ``maker.dft_category``)."""
    from jobflow.managers.fireworks import flow_to_workflow

    rep = SubmitReport()
    for m in materials:
        flow = maker.make(m.structure, m.label, ml_doc=(ml_docs or {}).get(m.label))
        wf = flow_to_workflow(flow, metadata={"tdphonon_campaign": maker.campaign, "tdphonon_label": m.label,
                                              "tdphonon_branch": VALIDATION_STEP, "tdphonon_source": m.source,
                                              "tdphonon_calculator": maker.calculator})
        ids = launchpad.add_wf(wf)
        rep.submitted.append({"label": m.label, "fw_ids": sorted(ids.values())})
    return rep


def run_validation_local(materials: Iterable[MaterialInput], maker: ValidationMaker, store,
                         ml_docs: Mapping[str, dict] | None = None) -> SubmitReport:
    """Run the validation flows in this process into ``store``; failures are recorded, not fatal."""
    from jobflow import run_locally

    rep = SubmitReport()
    for m in materials:
        t0 = time.perf_counter()
        try:
            run_locally(maker.make(m.structure, m.label, ml_doc=(ml_docs or {}).get(m.label)), store=store,
                        create_folders=False, raise_immediately=True, log=False)
        except Exception as exc:  # reported per material, the others continue
            rep.failed.append({"label": m.label, "reason": f"{type(exc).__name__}: {exc}"})
            continue
        rep.submitted.append({"label": m.label, "seconds": time.perf_counter() - t0})
    return rep


def validation_results(store, campaign: str | None = None, load_arrays: bool = False) -> list[dict]:
    """Validation documents (output of the ``anharmonic`` job) in ``store``."""
    crit: dict[str, Any] = {"metadata.tdphonon_branch": VALIDATION_STEP, "metadata.tdphonon_step": "anharmonic"}
    if campaign:
        crit["metadata.tdphonon_campaign"] = campaign
    store.connect()
    return [d["output"] for d in store.query(crit, load=load_arrays)]


def write_validation_outputs(doc: Mapping[str, Any], out_dir: str | Path, ml_doc: Mapping[str, Any] | None = None,
                             plot: bool = True) -> dict[str, Path]:
    """``comparison.json``, ``validation.json`` and the figures (dispersions, scattering rates) of one material.

    ``doc`` with arrays (``validation_results(..., load_arrays=True)``); ``ml_doc`` with arrays adds
    the ML dispersions to ``dispersions.png``.
    """
    from tdphonon.harmonic import _json_default, make_phonopy

    d = Path(out_dir)
    d.mkdir(parents=True, exist_ok=True)
    files = {"comparison": d / "comparison.json", "validation": d / "validation.json"}
    files["comparison"].write_text(json.dumps(doc["comparison"], indent=1, default=_json_default))
    files["validation"].write_text(json.dumps(doc["summary"], indent=1, default=_json_default))
    if not plot:
        return files
    from pymatgen.core import Structure

    from tdphonon.validation.compare import plot_validation_dispersions

    def phonopy_of(structure, scm, pm, fc):
        s = structure if isinstance(structure, Structure) else Structure.from_dict(structure)
        ph = make_phonopy(s, np.asarray(scm, dtype=int), np.asarray(pm, dtype=float))
        fc = np.asarray(fc, dtype="double")
        if fc.shape[0] != fc.shape[1]:  # compact (n_prim, N, 3, 3) -> full
            from phonopy.harmonic.force_constants import compact_fc_to_full_fc

            fc = compact_fc_to_full_fc(ph.primitive, fc)
        ph.force_constants = np.ascontiguousarray(fc)
        return ph

    fcs = doc["force_constants"]
    sets = [("reference 0 K", phonopy_of(doc["structure"], doc["supercell_matrix"], doc["primitive_matrix"],
                                         fcs["harmonic"]))]
    t_ref = fcs["temperatures"][-1]
    sets.append((f"reference SCPH {t_ref:g} K", phonopy_of(doc["structure"], doc["supercell_matrix"],
                                                        doc["primitive_matrix"], fcs["scph"][-1])))
    if ml_doc is not None and "force_constants" in ml_doc and "harmonic" in ml_doc["force_constants"]:
        mf = ml_doc["force_constants"]
        args = (ml_doc["structure"], ml_doc["supercell_matrix"], ml_doc["primitive_matrix"])
        sets.append((f"ML 0 K ({ml_doc['model']['name']})", phonopy_of(*args, mf["harmonic"])))
        temps = [float(t) for t in mf["temperatures"]]
        if t_ref in temps:
            sets.append((f"ML TDPH {t_ref:g} K", phonopy_of(*args, mf["renormalized"][temps.index(t_ref)])))
    files["dispersions"] = plot_validation_dispersions(sets, d / "dispersions.png",
                                                       title=f"{doc['label']}: reference vs ML")
    if doc.get("scattering_rates"):
        from tdphonon.validation.compare import plot_scattering_rates

        files["scattering_rates"] = plot_scattering_rates(doc["scattering_rates"], t_ref, d / "scattering_rates.png",
                                                          title=f"{doc['label']}: HA+3ph vs SCPH+3ph at {t_ref:g} K")
    return files
