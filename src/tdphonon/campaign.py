"""Campaigns: many materials through FireWorks (or in-process), results in a jobflow store.

Everything here is plain functions over a FireWorks :class:`~fireworks.LaunchPad` and a jobflow
:class:`~jobflow.JobStore`; the ``tdphonon submit/status/query/rerun/export/campaign`` commands are
thin wrappers. Production: MongoDB launchpad (``my_launchpad.yaml``) and a MongoStore + GridFSStore
job store (``jobflow.yaml``); see ``docs/campaign.md``. Workstation: :func:`run_local` runs the same
flows with ``run_locally`` into a file-backed store (:func:`local_store`) in the output folder.

Duplicate detection: every flow carries the key sha256(structure fingerprint, model sha256,
settings digest) in its workflow metadata and job metadata, and every finished document carries it
as ``dedup_key``; a material whose key is already on the launchpad or in the store is not
submitted again.
"""

from __future__ import annotations

import csv
import json
import os
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pymatgen.core import Structure

from tdphonon.errors import TDPhononError
from tdphonon.flows import TDPhononMaker
from tdphonon.structures import load_structure

__all__ = [
    "MaterialInput",
    "SubmitReport",
    "export",
    "failures",
    "load_launchpad",
    "load_store",
    "local_store",
    "query",
    "read_inputs",
    "rerun",
    "run_local",
    "status",
    "submit",
    "write_outputs",
]

STRUCTURE_SUFFIXES = (".cif", ".vasp", ".poscar", ".json", ".xsf", ".cssr")
STRUCTURE_PREFIXES = ("POSCAR", "CONTCAR")
PHONOPY_NAMES = ("phonopy_params.yaml", "phonopy_params.yaml.xz", "phonopy.yaml", "phonopy.yaml.xz",
                 "phonopy_disp.yaml", "phonopy_disp.yaml.xz")
METRICS_STEP = "metrics"


# --------------------------------------------------------------------------------------------
# inputs
# --------------------------------------------------------------------------------------------
@dataclass
class MaterialInput:
    """One material to compute: a label, its structure and where it came from."""

    label: str
    structure: Structure
    source: str


def _phonopy_structure(path: Path) -> Structure:
    import phonopy

    from tdphonon.structures import from_phonopy_atoms

    ph = phonopy.load(str(path), produce_fc=False, log_level=0)
    return from_phonopy_atoms(ph.unitcell)


def _read_one(path: Path, label: str) -> Structure:
    if path.name in PHONOPY_NAMES or path.name.startswith("phonopy"):
        return _phonopy_structure(path)
    return load_structure(path, label)


def _is_structure_file(p: Path) -> bool:
    return p.is_file() and (p.suffix.lower() in STRUCTURE_SUFFIXES or p.name.startswith(STRUCTURE_PREFIXES)
                            or p.name in PHONOPY_NAMES)


def _entries_from_table(path: Path) -> list[tuple[str, Any]]:
    """(label, structure source) pairs from a CSV (columns label, path|file|cif) or JSON list."""
    rows: list[dict] = []
    if path.suffix.lower() == ".csv":
        with path.open(newline="") as fh:
            rows = list(csv.DictReader(fh))
    else:
        data = json.loads(path.read_text())
        rows = data if isinstance(data, list) else data.get("materials", [])
    out = []
    for k, row in enumerate(rows):
        label = str(row.get("label") or row.get("material_id") or row.get("name") or f"{path.stem}-{k}")
        if isinstance(row.get("structure"), dict):
            out.append((label, row["structure"]))
        elif row.get("cif"):
            out.append((label, ("cif", row["cif"])))
        else:
            src = row.get("path") or row.get("file") or row.get("structure")
            if not src:
                out.append((label, None))
                continue
            p = Path(os.path.expanduser(str(src)))
            out.append((label, p if p.is_absolute() else path.parent / p))
    return out


def read_inputs(source: str | os.PathLike | Sequence[str | os.PathLike]) -> tuple[list[MaterialInput], list[dict]]:
    """Materials from a folder, a structure file, a CSV/JSON list or phonopy database entries.

    * a folder: every CIF/POSCAR/CONTCAR/``*.vasp``/pymatgen JSON file in it, and phonopy database
      entries (``phonopy_params.yaml(.xz)`` etc., anywhere below it: the MDR layout
      ``<material id>/phonopy_params.yaml.xz`` gives the label ``<material id>``);
    * a ``.csv`` with columns ``label`` and ``path`` (or ``file``; or ``cif`` with the CIF text);
    * a ``.json`` list of ``{"label": ..., "path": ...}`` or ``{"label": ..., "structure": {...}}``;
    * a single structure or phonopy file.

    Returns the materials and the skipped entries ``{"label", "source", "reason"}`` (unreadable or
    invalid structures are reported, never silently dropped). Labels are made unique.
    """
    sources = [source] if isinstance(source, (str, os.PathLike)) else list(source)
    pending: list[tuple[str, Any]] = []
    for src in sources:
        p = Path(src)
        if p.is_dir():
            files = sorted(f for f in p.iterdir() if _is_structure_file(f))
            pending += [(f.name.split(".")[0] if not f.name.startswith(STRUCTURE_PREFIXES) else f.name, f)
                        for f in files]
            for f in sorted(p.rglob("*")):
                if f.name in PHONOPY_NAMES and f.parent != p:
                    pending.append((f.parent.name, f))
        elif p.suffix.lower() in (".csv",) or (p.suffix.lower() == ".json" and _is_material_list(p)):
            pending += _entries_from_table(p)
        elif p.exists():
            pending.append((p.name.split(".")[0], p))
        else:
            pending.append((p.name, None))
    materials: list[MaterialInput] = []
    skipped: list[dict] = []
    seen: Counter = Counter()
    for label, src in pending:
        seen[label] += 1
        if seen[label] > 1:
            label = f"{label}-{seen[label]}"
        try:
            if src is None:
                raise TDPhononError(label, "no structure given (missing path/file or the file does not exist)")
            if isinstance(src, dict):
                struct, where = Structure.from_dict(src), "inline structure"
            elif isinstance(src, tuple):
                struct, where = Structure.from_str(src[1], fmt="cif"), "inline CIF"
            else:
                if not Path(src).exists():
                    raise TDPhononError(label, f"file not found: {src}")
                struct, where = _read_one(Path(src), label), str(src)
            from tdphonon.structures import validate_structure

            validate_structure(struct, label)
            materials.append(MaterialInput(label, struct, where))
        except Exception as exc:  # reported to the user, never silently included
            skipped.append({"label": label, "source": str(src), "reason": f"{type(exc).__name__}: {exc}"})
    return materials, skipped


def _is_material_list(p: Path) -> bool:
    try:
        data = json.loads(p.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(data, list) or (isinstance(data, dict) and "materials" in data)


# --------------------------------------------------------------------------------------------
# stores and launchpads
# --------------------------------------------------------------------------------------------
def load_launchpad(path: str | os.PathLike | None = None):
    """LaunchPad from a ``my_launchpad.yaml`` (default: FireWorks' own search, ``LaunchPad.auto_load``)."""
    from fireworks import LaunchPad

    return LaunchPad.from_file(str(path)) if path else LaunchPad.auto_load()


def load_store(path: str | os.PathLike | None = None):
    """JobStore from a ``jobflow.yaml`` (its ``JOB_STORE``), or jobflow's configured default."""
    from jobflow import JobStore

    if path is None:
        from jobflow import SETTINGS

        return SETTINGS.JOB_STORE
    from monty.serialization import loadfn

    spec = loadfn(str(path))
    spec = spec.get("JOB_STORE", spec)
    return JobStore.from_dict_spec(spec)


def local_store(directory: str | os.PathLike):
    """File-backed JobStore in ``directory`` (``docs.json`` + ``data.json``): no server needed."""
    from jobflow import JobStore
    from maggma.stores import JSONStore

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    docs = JSONStore(str(d / "docs.json"), read_only=False)
    data = JSONStore(str(d / "data.json"), read_only=False)
    return JobStore(docs, additional_stores={"data": data})


def _connected(store):
    store.connect()
    return store


# --------------------------------------------------------------------------------------------
# submission
# --------------------------------------------------------------------------------------------
@dataclass
class SubmitReport:
    """What :func:`submit` (or :func:`run_local`) did with each material."""

    submitted: list[dict] = field(default_factory=list)
    duplicates: list[dict] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)
    failed: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"submitted": self.submitted, "duplicates": self.duplicates, "skipped": self.skipped,
                "failed": self.failed}


def model_sha256(model: str) -> tuple[str, dict]:
    """sha256 and identity of a model spec (loads it once, on the CPU, cached for the process)."""
    from tdphonon.potentials import load_potential

    ident = load_potential(model, device="cpu").identity.to_dict()
    return ident["sha256"], ident


def _existing(launchpad, store, keys: Sequence[str]) -> tuple[str, str] | None:
    """(reason, stored key) of the first of ``keys`` already on the launchpad or in the store."""
    if launchpad is not None:
        wf = launchpad.workflows.find_one({"metadata.tdphonon_key": {"$in": list(keys)}},
                                          {"state": 1, "nodes": 1, "metadata.tdphonon_key": 1})
        if wf is not None:
            return (f"already on the launchpad (workflow of fw {min(wf['nodes'])}, state {wf['state']})",
                    wf["metadata"]["tdphonon_key"])
    if store is not None:
        doc = store.query_one({"output.dedup_key": {"$in": list(keys)}, "metadata.tdphonon_step": METRICS_STEP},
                              properties=["uuid", "output.dedup_key"], load=False)
        if doc is not None:
            return f"result already in the store (job {doc['uuid']})", doc["output"]["dedup_key"]
    return None


def _new_materials(materials: Iterable[MaterialInput], maker: TDPhononMaker, sha: str, launchpad, store,
                   rep: SubmitReport) -> Iterator[tuple[MaterialInput, list[str]]]:
    """(material, keys) of each material not yet on the launchpad or in the store; duplicates go to ``rep``.

    ``keys``: the material's key first, then the keys earlier versions gave the same run
    (:meth:`TDPhononMaker.keys`), so results stored before a new option existed are still found. A
    duplicate's ``key`` in ``rep`` is the key it is stored under.
    """
    for m in materials:
        keys = maker.keys(m.structure, sha)
        found = _existing(launchpad, store, keys)
        if found:
            rep.duplicates.append({"label": m.label, "key": found[1], "reason": found[0]})
            continue
        yield m, keys


def submit(materials: Iterable[MaterialInput], maker: TDPhononMaker, launchpad, store=None,
           model_sha: str | None = None) -> SubmitReport:
    """Add one workflow per material to ``launchpad``; skip duplicates (launchpad or ``store``)."""
    from jobflow.managers.fireworks import flow_to_workflow

    sha = model_sha or model_sha256(maker.model)[0]
    if store is not None:
        _connected(store)
    rep = SubmitReport()
    for m, keys in _new_materials(materials, maker, sha, launchpad, store, rep):
        key = keys[0]
        flow = maker.make(m.structure, m.label, model_sha256=sha)
        wf = flow_to_workflow(flow, metadata={"tdphonon_key": key, "tdphonon_campaign": maker.campaign,
                                              "tdphonon_label": m.label, "tdphonon_source": m.source,
                                              "tdphonon_model": maker.model, "tdphonon_model_sha256": sha})
        ids = launchpad.add_wf(wf)
        rep.submitted.append({"label": m.label, "key": key, "fw_ids": sorted(ids.values())})
    return rep


def run_local(materials: Iterable[MaterialInput], maker: TDPhononMaker, store,
              model_sha: str | None = None, progress=None) -> SubmitReport:
    """Run every material's flow in this process (``run_locally``) into ``store``.

    Duplicates (same key already in the store) are skipped; a failing material is recorded with its
    reason in the store (a ``tdphonon_failure`` document) and does not stop the others.
    """
    from jobflow import run_locally

    sha = model_sha or model_sha256(maker.model)[0]
    _connected(store)
    rep = SubmitReport()
    materials = list(materials)
    for m, keys in _new_materials(materials, maker, sha, None, store, rep):
        key = keys[0]
        if progress:
            progress(m.label, len(rep.submitted) + len(rep.duplicates) + len(rep.failed), len(materials))
        flow = maker.make(m.structure, m.label, model_sha256=sha)
        t0 = time.perf_counter()
        earlier = {"uuid": {"$in": [f"failure-{k}" for k in keys]}}  # failures stored by earlier runs
        try:
            run_locally(flow, store=store, create_folders=False, raise_immediately=True, log=False)
        except Exception as exc:
            if store.docs_store.count(earlier):  # replaced by this one (under today's key)
                store.docs_store.remove_docs(earlier)
            reason = f"{type(exc).__name__}: {exc}"
            store.docs_store.update([{"uuid": f"failure-{key}", "index": 1, "name": f"{m.label} failure",
                                      "metadata": {"tdphonon_step": "failure", "tdphonon_key": key,
                                                   "tdphonon_label": m.label,
                                                   "tdphonon_campaign": maker.campaign},
                                      "output": None, "reason": reason,
                                      "completed_at": time.strftime("%Y-%m-%dT%H:%M:%S")}],
                                    key=["uuid", "index"])
            rep.failed.append({"label": m.label, "key": key, "reason": reason})
            continue
        if store.docs_store.count(earlier):  # an earlier failure, now fixed
            store.docs_store.remove_docs(earlier)
        rep.submitted.append({"label": m.label, "key": key, "seconds": time.perf_counter() - t0})
    if progress:
        progress("done", len(materials), len(materials))
    return rep


# --------------------------------------------------------------------------------------------
# status, failures, rerun
# --------------------------------------------------------------------------------------------
def status(launchpad, campaign: str | None = None) -> dict[str, Any]:
    """Counts of workflows (materials) and fireworks by state, per campaign."""
    crit: dict[str, Any] = {"metadata.tdphonon_key": {"$exists": True}}
    if campaign:
        crit["metadata.tdphonon_campaign"] = campaign
    out: dict[str, Any] = {}
    for wf in launchpad.workflows.find(crit, {"state": 1, "fw_states": 1, "metadata": 1}):
        name = wf["metadata"].get("tdphonon_campaign") or "(none)"
        c = out.setdefault(name, {"materials": Counter(), "fireworks": Counter(), "n_materials": 0})
        c["n_materials"] += 1
        c["materials"][wf["state"]] += 1
        c["fireworks"].update(wf.get("fw_states", {}).values())
    return {k: {"n_materials": v["n_materials"], "materials": dict(v["materials"]),
                "fireworks": dict(v["fireworks"])} for k, v in out.items()}


def _reason(launchpad, fw: dict) -> str:
    launch_ids = fw.get("launches") or []
    for lid in reversed(launch_ids):
        launch = launchpad.launches.find_one({"launch_id": lid}, {"action": 1, "state": 1})
        action = (launch or {}).get("action") or {}
        exc = (action.get("stored_data") or {}).get("_exception") or {}
        trace = exc.get("_stacktrace") or ""
        if trace:
            lines = [ln for ln in trace.strip().splitlines() if ln.strip()]
            return lines[-1] if lines else trace
        if launch and launch.get("state") == "FIZZLED":
            return "fizzled without a stored exception (killed worker or lost run)"
    return "no launch recorded"


def failures(launchpad, campaign: str | None = None, states: Sequence[str] = ("FIZZLED",)) -> list[dict]:
    """FIZZLED (or other ``states``) fireworks of tdphonon workflows with the reason of the last launch."""
    crit: dict[str, Any] = {"state": {"$in": list(states)}, "spec.tdphonon_label": {"$exists": True}}
    if campaign:
        crit["spec.tdphonon_campaign"] = campaign
    out = []
    for fw in launchpad.fireworks.find(crit, {"fw_id": 1, "name": 1, "state": 1, "launches": 1,
                                               "spec.tdphonon_label": 1, "spec.tdphonon_campaign": 1}):
        out.append({"fw_id": fw["fw_id"], "name": fw["name"], "state": fw["state"],
                    "label": fw["spec"].get("tdphonon_label"), "campaign": fw["spec"].get("tdphonon_campaign"),
                    "reason": _reason(launchpad, fw)})
    return sorted(out, key=lambda d: d["fw_id"])


def rerun(launchpad, campaign: str | None = None, fw_ids: Sequence[int] | None = None,
          lost_after: float = 4 * 3600.0, dry_run: bool = False) -> dict[str, Any]:
    """Detect lost runs and rerun them with the FIZZLED fireworks (FireWorks' own machinery).

    ``detect_lostruns`` (``lpad detect_lostruns``) finds RUNNING fireworks whose worker has not
    pinged for ``lost_after`` seconds (a killed node or ``SIGKILL``); they and the FIZZLED ones of
    the campaign (or ``fw_ids``) are reset with ``rerun_fw`` (``lpad rerun_fws``). Reruns of a job
    overwrite its earlier output (same jobflow uuid and index), so nothing is duplicated.
    """
    query = {"spec.tdphonon_label": {"$exists": True}}
    if campaign:
        query["spec.tdphonon_campaign"] = campaign
    _, lost_fw_ids, inconsistent = launchpad.detect_lostruns(expiration_secs=lost_after, query=query,
                                                             fizzle=False, rerun=False)
    fizzled = failures(launchpad, campaign)
    if fw_ids:
        wanted = set(int(i) for i in fw_ids)
        fizzled = [f for f in fizzled if f["fw_id"] in wanted]
        lost_fw_ids = [i for i in lost_fw_ids if i in wanted]
    lost = []
    for i in lost_fw_ids:
        fw = launchpad.fireworks.find_one({"fw_id": i}, {"name": 1, "spec.tdphonon_label": 1})
        lost.append({"fw_id": i, "name": fw["name"], "label": fw["spec"].get("tdphonon_label"),
                     "reason": f"lost run: no ping from its worker for more than {lost_after:g} s (killed?)"})
    if not dry_run:
        for f in lost + fizzled:
            launchpad.rerun_fw(f["fw_id"])
    return {"lost": lost, "fizzled": fizzled, "inconsistent": list(inconsistent), "rerun": not dry_run}


# --------------------------------------------------------------------------------------------
# results
# --------------------------------------------------------------------------------------------
def results_criteria(campaign: str | None = None, r_onsite_min: float | None = None,
                     r_full_min: float | None = None, elements: Sequence[str] | None = None,
                     spacegroup: int | str | None = None, temperature: float | None = None,
                     model: str | None = None, label: str | None = None,
                     exclude_imaginary_fixed_points: bool = False,
                     exclude_step_sensitive: bool = False, exclude_cut_samples: bool = False) -> dict[str, Any]:
    """Mongo criteria on the job store selecting :class:`TDPhononDoc` results.

    The per-temperature conditions (``temperature``, ``r_onsite_min``, ``r_full_min``) must hold at one
    and the same temperature. ``exclude_imaginary_fixed_points`` drops self-consistent results that
    converged to a Φ(T) with imaginary modes (not SCHA solutions; ``TemperatureDoc.imaginary_fixed_point``):
    at that temperature when per-temperature conditions are given, otherwise at any temperature.
    ``exclude_step_sensitive`` drops results whose harmonic step check found step-dependent force
    constants (``harmonic.step_check.step_sensitive``; results computed without the check are kept).
    ``exclude_cut_samples`` drops results whose sample was not the full Gaussian of Σ(T) at any of
    their temperatures: configurations dropped (``drop_outliers``) or displacements clipped
    (``cap_mode="clip"``).
    """
    crit: dict[str, Any] = {"metadata.tdphonon_step": METRICS_STEP}
    if exclude_step_sensitive:
        crit["output.harmonic.step_check.step_sensitive"] = {"$ne": True}
    if exclude_cut_samples:
        crit["output.temperatures.outliers.0"] = {"$exists": False}
        crit["output.temperatures.n_clipped_atoms"] = {"$not": {"$gt": 0}}
    if campaign:
        crit["output.campaign"] = campaign
    if label:
        crit["output.label"] = label
    if elements:
        crit["output.elements"] = {"$all": [str(e) for e in elements]}
    if spacegroup is not None:
        sg = str(spacegroup)
        crit["output.spacegroup_number" if sg.isdigit() else "output.spacegroup_symbol"] = \
            int(sg) if sg.isdigit() else sg
    if model:
        crit["$or"] = [{"output.model.name": model}, {"output.model_sha256": model}]
    elem: dict[str, Any] = {}
    if temperature is not None:
        elem["temperature"] = float(temperature)
    if r_onsite_min is not None:
        elem["r_onsite_max"] = {"$gte": float(r_onsite_min)}
    if r_full_min is not None:
        elem["r_full"] = {"$gte": float(r_full_min)}
    if exclude_imaginary_fixed_points:
        if elem:
            elem["imaginary_fixed_point"] = {"$ne": True}
        else:
            crit["output.temperatures.imaginary_fixed_point"] = {"$ne": True}
    if elem:
        crit["output.temperatures"] = {"$elemMatch": elem}
    return crit


def query(store, load_arrays: bool = False, **filters) -> list[dict]:
    """Result documents (``TDPhononDoc`` as dicts) matching ``filters`` (see :func:`results_criteria`)."""
    _connected(store)
    crit = results_criteria(**filters)
    docs = []
    for d in store.query(crit, load=load_arrays):
        out = d["output"]
        out["_job"] = {"uuid": d["uuid"], "index": d.get("index"), "completed_at": d.get("completed_at"),
                       "fw_id": (d.get("metadata") or {}).get("fw_id")}
        docs.append(out)
    return sorted(docs, key=lambda o: (o.get("campaign") or "", o["label"]))


def rows(docs: Sequence[dict], temperature: float | None = None) -> list[dict]:
    """One flat row per material and temperature (for tables, CSV and pandas)."""
    out = []
    for d in docs:
        for t in d["temperatures"]:
            if temperature is not None and abs(t["temperature"] - float(temperature)) > 1e-6:
                continue
            out.append({"label": d["label"], "formula": d["formula"], "spacegroup": d["spacegroup_symbol"],
                        "spacegroup_number": d["spacegroup_number"], "campaign": d.get("campaign"),
                        "model": d["model"]["name"], "temperature": t["temperature"], "r_full": t["r_full"],
                        "r_onsite_max": t["r_onsite_max"], "frequency_shift": t["frequency_shift"],
                        "min_frequency_thz": t.get("min_frequency_thz"), "converged": t.get("converged"),
                        **trust_flags(d, t), "n_atoms_supercell": d["n_atoms_supercell"]})
    return out


def trust_flags(doc: Mapping[str, Any], t: Mapping[str, Any]) -> dict[str, Any]:
    """What qualifies a result at one temperature ``t`` of ``doc`` (columns of :func:`rows` and of
    ``analysis.material_frame``): a self-consistent Φ(T) with imaginary modes, configurations dropped
    (``drop_outliers``), displacements clipped to the cap (``cap_mode="clip"``), and the harmonic step
    check's flag (``None`` without a check)."""
    return {"imaginary_fixed_point": t.get("imaginary_fixed_point"),
            "n_dropped_configurations": len(t.get("outliers") or []),
            "n_clipped_atoms": t.get("n_clipped_atoms", 0),
            "step_sensitive": ((doc.get("harmonic") or {}).get("step_check") or {}).get("step_sensitive")}


def local_failures(store, campaign: str | None = None) -> list[dict]:
    """Failures recorded by :func:`run_local`."""
    _connected(store)
    crit: dict[str, Any] = {"metadata.tdphonon_step": "failure"}
    if campaign:
        crit["metadata.tdphonon_campaign"] = campaign
    return [{"label": d["metadata"]["tdphonon_label"], "reason": d.get("reason"), "key": d["metadata"]["tdphonon_key"]}
            for d in store.docs_store.query(crit)]


def write_outputs(doc: dict, out_dir: str | os.PathLike, plot: bool = False) -> dict[str, Path]:
    """Files of one material from its document *with arrays* (``query(..., load_arrays=True)``).

    ``phonopy_0K.yaml`` and ``phonopy_<T>K.yaml`` (``phonopy.load`` reads them), ``summary.json``
    (the document without arrays) and, with ``plot``, ``dispersion_dos.png`` at 0 K and each T.
    """
    from tdphonon.harmonic import _json_default, phonon_properties, save_phonopy_yaml
    from tdphonon.jobs import harmonic_settings_from_dict, phonopy_from_output

    d = Path(out_dir)
    d.mkdir(parents=True, exist_ok=True)
    doc = dict(doc)
    fcs = doc.pop("force_constants")
    base = {"structure": doc["structure"], "supercell_matrix": doc["supercell_matrix"],
            "primitive_matrix": doc["primitive_matrix"]}
    phonons = [("0 K (harmonic)", "phonopy_0K", phonopy_from_output({**base, "force_constants": fcs["harmonic"]}))]
    for t, fc in zip(fcs["temperatures"], fcs["renormalized"], strict=True):
        phonons.append((f"{t:g} K", f"phonopy_{t:g}K", phonopy_from_output({**base, "force_constants": fc})))
    files = {name: save_phonopy_yaml(ph, d / f"{name}.yaml") for _, name, ph in phonons}
    files["summary"] = d / "summary.json"
    files["summary"].write_text(json.dumps(doc, indent=1, default=_json_default))
    if plot:
        from tdphonon.plotting import plot_dispersion_dos

        hs = harmonic_settings_from_dict(doc.get("harmonic_settings"))
        sets = [(lab, phonon_properties(ph, hs)) for lab, _, ph in phonons]
        ts = doc.get("tdph_settings", {})
        files["plot"] = plot_dispersion_dos(
            sets, d / "dispersion_dos.png",
            title=f"{doc['label']} — {doc['model']['name']} — {ts.get('estimator')}"
                  f"{' self-consistent' if ts.get('self_consistent') else ' one-shot'}")
    return files


def export(store, out_dir: str | os.PathLike, plot: bool = False, **filters) -> list[Path]:
    """Per material (``<out>/<campaign>/<label>/``): see :func:`write_outputs`."""
    out = Path(out_dir)
    written = []
    for doc in query(store, load_arrays=True, **filters):
        d = out / (f"{doc['campaign']}/" if doc.get("campaign") else "") / doc["label"]
        write_outputs(doc, d, plot)
        written.append(d)
    return written
