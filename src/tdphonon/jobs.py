"""jobflow jobs: thin wrappers around the pure functions, four per material.

1. :func:`harmonic_phonons_job` — (relaxation +) ML harmonic phonons Φ⁰ (GPU).
2. :func:`sampling_job` — Σ(T; Φ⁰) and the displaced configurations of the first estimate at each
   temperature; fails early (before any model evaluation) on unphysical displacements (light).
3. :func:`force_constants_job` — Φ(T) by the chosen estimator, one-shot or self-consistent; the
   stored configurations are checked against the ones the estimator draws (GPU).
4. :func:`metrics_job` — R_full, R_onsite, frequency shift (as computed with Φ(T) by the estimator,
   with error bars), thermal properties of Φ(T), and the :class:`~tdphonon.schemas.TDPhononDoc` of
   the material (light).

Outputs are JSON-able dicts; arrays named ``force_constants`` and ``displacements`` are declared as
``data`` so jobflow puts them in the ``data`` store (GridFS in production). Force constants travel
in phonopy's compact form (n_prim, N, 3, 3), eV/Å². Models are loaded through
:func:`tdphonon.potentials.load_potential`, i.e. once per worker process and reused by every job
(rocket) that process runs.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from jobflow import job
from pymatgen.core import Structure

from tdphonon.harmonic import HarmonicSettings, _json_default, harmonic_phonons, make_phonopy
from tdphonon.metrics import drop_gamma_acoustic, harmonic_thermal_properties
from tdphonon.pipeline import named_qpoints
from tdphonon.potentials import hardware_info, load_potential, package_versions
from tdphonon.renormalize import OPTION_HISTORY, FCProjector, TDPHSettings, initial_samples, renormalize
from tdphonon.sampling import full_force_constants
from tdphonon.schemas import TDPhononDoc, TemperatureDoc, dedup_key
from tdphonon.structures import load_structure, spacegroup, structure_fingerprint

__all__ = [
    "force_constants_job",
    "harmonic_phonons_job",
    "harmonic_settings_from_dict",
    "metrics_job",
    "phonopy_from_output",
    "sampling_job",
]


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=_json_default))


def _run_ids() -> dict[str, Any]:
    """jobflow uuid / FireWorks fw_id of the running job (empty outside jobflow)."""
    from jobflow import CURRENT_JOB

    j = CURRENT_JOB.job
    if j is None:
        return {}
    return {"job_uuid": j.uuid, "job_index": j.index, "job_name": j.name, "fw_id": j.metadata.get("fw_id"),
            "hosts": list(j.hosts or [])}


def harmonic_settings_from_dict(d: Mapping[str, Any] | None) -> HarmonicSettings:
    """:class:`HarmonicSettings` from its ``to_dict()`` (lists back to tuples)."""
    d = dict(d or {})
    if d.get("supercell_matrix") is not None:
        arr = np.asarray(d["supercell_matrix"], dtype=int)
        d["supercell_matrix"] = tuple(map(tuple, arr.tolist())) if arr.ndim == 2 else tuple(arr.tolist())
    if isinstance(d.get("mesh"), list):
        d["mesh"] = tuple(d["mesh"])
    return HarmonicSettings(**d)


def _structure(s: Structure | Mapping | str) -> Structure:
    if isinstance(s, Structure):
        return s
    if isinstance(s, Mapping):
        return Structure.from_dict(s)
    return load_structure(s)


def phonopy_from_output(harmonic: Mapping[str, Any], force_constants: np.ndarray | None = None):
    """Rebuild the phonopy object of a :func:`harmonic_phonons_job` output (same atom order).

    ``force_constants`` (compact or full) replace Φ⁰ when given.
    """
    ph = make_phonopy(_structure(harmonic["structure"]), np.asarray(harmonic["supercell_matrix"], dtype=int),
                      np.asarray(harmonic["primitive_matrix"], dtype=float))
    fc = np.asarray(harmonic["force_constants"] if force_constants is None else force_constants, dtype="double")
    ph.force_constants = np.ascontiguousarray(fc)
    return ph


def _load(model: str, device: str | None, label: str | None):
    """The (process-cached) model and whether this job had to load it; load failures name the material."""
    from tdphonon.errors import ModelLoadError
    from tdphonon.potentials import LOAD_SECONDS

    before = dict(LOAD_SECONDS)
    try:
        pot = load_potential(model, device)
    except ModelLoadError as exc:
        raise ModelLoadError(label, exc.reason) from exc
    new = {f"{k[0]}@{k[1]}": v for k, v in LOAD_SECONDS.items() if before.get(k) != v}
    return pot, {"loaded_in_this_job": bool(new), "load_seconds": sum(new.values()), "pid": os.getpid()}


def _compact(ph, fc_full: np.ndarray) -> np.ndarray:
    return np.asarray(fc_full)[np.asarray(ph.primitive.p2s_map)]


@job(data=["force_constants"])
def harmonic_phonons_job(structure: Structure | Mapping | str, model: str, harmonic_settings: Mapping | None = None,
                         label: str | None = None, device: str | None = None) -> dict[str, Any]:
    """ML harmonic phonons (optionally after relaxation) of one material; Φ⁰ to the data store."""
    t0 = time.perf_counter()
    struct = _structure(structure)
    pot, load_info = _load(model, device, label or struct.composition.reduced_formula)
    hs = harmonic_settings_from_dict(harmonic_settings)
    harm = harmonic_phonons(struct, pot, hs, label=label)
    ph = harm.phonon
    return {
        "label": harm.label,
        "structure": harm.structure.as_dict(),
        "input_structure_fingerprint": structure_fingerprint(struct),
        "supercell_matrix": np.asarray(ph.supercell_matrix, dtype=int).tolist(),
        "primitive_matrix": np.asarray(ph.primitive_matrix, dtype=float).tolist(),
        "force_constants": _compact(ph, full_force_constants(ph)).tolist(),
        "named_qpoints": named_qpoints(harm.properties),
        "summary": _jsonable(harm.summary()),
        "model": pot.identity.to_dict(),
        "timings": {"harmonic": time.perf_counter() - t0},
        "run": {**_run_ids(), "model_load": load_info},
    }


def _job_settings(tdph_settings: Mapping | None) -> TDPHSettings:
    """A job's TDPH settings: the full dict :class:`~tdphonon.flows.TDPhononMaker` stores in the job's
    spec (``None``: the defaults). A spec stored by an earlier version, rerun today, lacks the options
    added since; they read as the behaviour of that version (:meth:`TDPHSettings.from_stored`)."""
    return TDPHSettings.from_stored(tdph_settings) if tdph_settings else TDPHSettings()


@job(data=["displacements"])
def sampling_job(harmonic: Mapping[str, Any], temperatures: Sequence[float], tdph_settings: Mapping | None = None,
                 label: str | None = None) -> dict[str, Any]:
    """Σ(T; Φ⁰) and the first estimate's displaced configurations at each temperature.

    With a self-consistent warm-started scan only the highest temperature starts from Φ⁰; the
    configurations of the other temperatures are recorded (``used_by_estimator: false``) but the
    estimator draws from its warm-started Σ there.
    """
    t0 = time.perf_counter()
    label = label or harmonic["label"]
    ts = _job_settings(tdph_settings)
    ph = phonopy_from_output(harmonic)
    proj = FCProjector.from_phonopy(ph)
    temps = [float(t) for t in temperatures]
    hottest = max(temps) if temps else None
    out = []
    for t in temps:
        samp = initial_samples(ph, t, ts, label, projector=proj)
        used = not (ts.self_consistent and ts.warm_start) or t == hottest
        out.append({"temperature": t, "seed": samp.settings["seed"], "used_by_estimator": used,
                    "displacements": samp.displacements.tolist(), "sampling": _jsonable(samp.to_dict())})
    return {"label": label, "temperatures": out, "timings": {"sampling": time.perf_counter() - t0},
            "run": _run_ids()}


@job(data=["force_constants"])
def force_constants_job(harmonic: Mapping[str, Any], sampling: Mapping[str, Any] | None, model: str,
                        temperatures: Sequence[float], tdph_settings: Mapping | None = None,
                        label: str | None = None, device: str | None = None) -> dict[str, Any]:
    """Φ(T) at every temperature (:func:`tdphonon.renormalize.renormalize`); Φ's to the data store."""
    t0 = time.perf_counter()
    label = label or harmonic["label"]
    ts = _job_settings(tdph_settings)
    pot, load_info = _load(model, device, label)
    ph = phonopy_from_output(harmonic)
    given = None
    if sampling is not None:
        given = {float(e["temperature"]): np.asarray(e["displacements"], dtype=float)
                 for e in sampling["temperatures"] if e["used_by_estimator"]}
    results = renormalize(ph, pot, [float(t) for t in temperatures], ts, label,
                          qpoints=harmonic.get("named_qpoints") or None, initial_displacements=given)
    temps = []
    for r in results:
        d = _jsonable(r.to_dict(include_arrays=False))
        temps.append(d)
    fc0 = results[0].harmonic_force_constants if results else full_force_constants(ph)
    return {
        "label": label,
        "temperatures": temps,
        "force_constants": {"harmonic": _compact(ph, fc0).tolist(),
                            "temperatures": [r.temperature for r in results],
                            "renormalized": [_compact(ph, r.force_constants).tolist() for r in results]},
        "model": pot.identity.to_dict(),
        "settings": {**ts.to_dict(), "digest": ts.digest()},
        "hardware": hardware_info(pot.device),
        "timings": {"force_constants": time.perf_counter() - t0},
        "run": {**_run_ids(), "model_load": load_info},
    }


def _crystal_system(number: int) -> str:
    for upper, name in ((2, "triclinic"), (15, "monoclinic"), (74, "orthorhombic"), (142, "tetragonal"),
                        (167, "trigonal"), (194, "hexagonal"), (230, "cubic")):
        if number <= upper:
            return name
    raise ValueError(f"invalid space-group number {number}")


def _site_list(sites: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    return [{"index": s["atom"], "element": s["symbol"], "multiplicity": s["multiplicity"],
             "r_onsite": s["r_onsite"]} for s in sites]


@job(data=["force_constants"])
def metrics_job(harmonic: Mapping[str, Any], force_constants: Mapping[str, Any], tdph_settings: Mapping | None = None,
                label: str | None = None, campaign: str | None = None,
                upstream: Sequence[Mapping[str, Any]] | None = None) -> TDPhononDoc:
    """The material's :class:`TDPhononDoc`: metrics of each Φ(T), thermal properties of Φ(T), provenance.

    R_full, R_onsite (per site) and the frequency shift are those :func:`~tdphonon.renormalize.renormalize`
    computed in the force-constants job (with their error bars); this job adds F, S, Cv of Φ(T) at T and
    assembles the document.
    """
    t0 = time.perf_counter()
    label = label or harmonic["label"]
    ts = _job_settings(tdph_settings)
    fcs = force_constants["force_constants"]
    structure = _structure(harmonic["structure"])
    temps_docs: list[TemperatureDoc] = []
    by_t = {round(float(d["temperature"]) * 1000): d for d in force_constants["temperatures"]}
    fc_by_t = dict(zip([round(float(t) * 1000) for t in fcs["temperatures"]], fcs["renormalized"], strict=True))
    for key in sorted(by_t):
        d = by_t[key]
        t = float(d["temperature"])
        tp = harmonic_thermal_properties(phonopy_from_output(harmonic, fc_by_t[key]), None, [t])
        m, err = d["metrics"], d.get("errors", {})
        nonac = drop_gamma_acoustic(np.asarray(d["frequencies"]), np.asarray(d["qpoints"]))
        temps_docs.append(TemperatureDoc(
            temperature=t, r_full=m["r_full"], r_full_error=err.get("r_full"),
            r_full_noise_floor=m.get("r_full_noise_floor"), r_onsite_max=m["r_onsite_max"],
            r_onsite_max_error=err.get("r_onsite_max"), r_onsite_sites=_site_list(m["r_onsite"]["sites"]),
            frequency_shift=m["frequency_shift"], frequency_shift_error=err.get("frequency_shift"),
            anharmonicity=m.get("anharmonicity"), converged=d.get("converged"),
            imaginary_fixed_point=d.get("mode_report", {}).get("imaginary_fixed_point"),
            n_iterations=int(d.get("n_iterations", 1)), force_calls=int(d.get("force_calls", 0)),
            hessian_calls=int(d.get("hessian_calls", 0)), seeds=[int(x) for x in d.get("seeds", [])],
            min_frequency_thz=float(nonac.min()) if nonac.size else None,
            named_frequencies=d.get("named_frequencies", {}),
            thermal={"free_energy": float(tp.free_energy[0]), "entropy": float(tp.entropy[0]),
                     "heat_capacity": float(tp.heat_capacity[0]), "n_imaginary_mesh": tp.n_imaginary},
            mode_report=d.get("mode_report", {}), outliers=d.get("outliers", []),
            n_clipped_atoms=sum(int(h.get("n_clipped_atoms", 0)) for h in d.get("history", [])),
            timings={k: float(v) for k, v in d.get("timings", {}).items()},
        ))
    sg_symbol, sg_number = spacegroup(structure)
    model = harmonic["model"]
    hsum = harmonic.get("summary", {})
    harmonic_settings = hsum.get("settings", {})
    digest = settings_digest(harmonic_settings, ts.to_dict(), [d.temperature for d in temps_docs])
    in_fp = harmonic.get("input_structure_fingerprint") or structure_fingerprint(structure)
    provenance = {"packages": package_versions(), "hardware": force_constants.get("hardware", hardware_info()),
                  "jobs": [dict(u) for u in (upstream or [])] + [_run_ids()],
                  "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    timings = {**harmonic.get("timings", {}), **force_constants.get("timings", {}),
               "metrics": time.perf_counter() - t0}
    return TDPhononDoc(
        label=label, campaign=campaign, formula=structure.composition.reduced_formula,
        elements=sorted(str(e) for e in structure.composition.elements),
        nelements=len(structure.composition.elements), nsites=len(structure),
        spacegroup_symbol=sg_symbol, spacegroup_number=sg_number, crystal_system=_crystal_system(sg_number),
        structure=structure.as_dict(), structure_fingerprint=structure_fingerprint(structure),
        input_structure_fingerprint=in_fp, supercell_matrix=harmonic["supercell_matrix"],
        primitive_matrix=harmonic["primitive_matrix"], n_atoms_supercell=len(fcs["harmonic"][0]), model=model,
        model_sha256=model["sha256"], harmonic_settings=harmonic_settings,
        tdph_settings={**ts.to_dict(), "digest": ts.digest()}, settings_digest=digest,
        dedup_key=dedup_key(in_fp, model["sha256"], digest),
        harmonic={"imaginary": hsum.get("phonons", {}).get("imaginary"), "relax": hsum.get("relax"),
                  "named_frequencies": by_t[min(by_t)].get("named_harmonic_frequencies", {}) if by_t else {},
                  "named_qpoints": harmonic.get("named_qpoints", {}),
                  "force_calls": hsum.get("force_constants", {}).get("force_calls_total"),
                  **({"step_check": hsum["step_check"]} if hsum.get("step_check") else {})},
        temperatures=temps_docs,
        r_full_max=max((d.r_full for d in temps_docs), default=0.0),
        r_onsite_max=max((d.r_onsite_max for d in temps_docs), default=0.0),
        force_constants=fcs, provenance=provenance, timings={k: float(v) for k, v in timings.items()},
    )


def _digest_payload(harmonic_settings: Mapping[str, Any], tdph: Mapping[str, Any],
                    temperatures: Sequence[float]) -> str:
    payload = {"harmonic": dict(harmonic_settings), "tdph": dict(tdph),
               "temperatures": sorted(round(float(t), 6) for t in temperatures)}
    return hashlib.sha256(json.dumps(_jsonable(payload), sort_keys=True).encode()).hexdigest()


def _tdph(tdph_settings: Mapping[str, Any]) -> TDPHSettings:
    d = {k: v for k, v in dict(tdph_settings).items() if k != "digest"}
    return TDPHSettings.from_dict({**TDPHSettings().to_dict(), **d})


def settings_digest(harmonic_settings: Mapping[str, Any], tdph_settings: Mapping[str, Any],
                    temperatures: Sequence[float]) -> str:
    """sha256 of everything besides structure and model that determines a material's result.

    Canonical form: the TDPH options that cannot change this run's result
    (:meth:`TDPHSettings.inert_options`) are left out, and so are the options added later
    (:data:`~tdphonon.renormalize.OPTION_HISTORY`) that hold the value reproducing the behaviour from
    before they existed. So neither a new option nor an option that does nothing here changes the
    key; results stored under the keys of earlier versions are found through :func:`settings_digests`.
    """
    ts = _tdph(tdph_settings)
    inert = ts.inert_options()
    d = ts.to_dict()
    for _, added in OPTION_HISTORY:
        inert |= {k for k, old in added.items() if old is not None and d[k] == old}
    return _digest_payload(harmonic_settings, {k: v for k, v in d.items() if k not in inert}, temperatures)


def settings_digests(harmonic_settings: Mapping[str, Any], tdph_settings: Mapping[str, Any],
                     temperatures: Sequence[float]) -> list[str]:
    """The canonical :func:`settings_digest` first, then every digest an earlier version gave the same run.

    Campaign keys of versions up to 055ba23 hashed every TDPH option that existed then. A run with
    today's settings has the key of the version before an entry of
    :data:`~tdphonon.renormalize.OPTION_HISTORY` when each option added since then has no effect
    here or holds its old-behaviour value (e.g. a one-shot run: every version; a self-consistent run
    with ``adaptive_mixing=True``: only the versions that had adaptive mixing).
    """
    ts = _tdph(tdph_settings)
    d, inert = ts.to_dict(), ts.inert_options()
    out = [settings_digest(harmonic_settings, tdph_settings, temperatures)]
    for i in range(len(OPTION_HISTORY), -1, -1):  # newest form first
        later = {k: old for _, added in OPTION_HISTORY[i:] for k, old in added.items()}
        if all(k in inert or (old is not None and d[k] == old) for k, old in later.items()):
            out.append(_digest_payload(harmonic_settings, {k: v for k, v in d.items() if k not in later},
                                       temperatures))
    return list(dict.fromkeys(out))
