"""The per-material flow: :class:`TDPhononMaker` (atomate2 style, ``make(structure) -> Flow``).

Four jobs (see :mod:`tdphonon.jobs`): harmonic phonons → sampling → averaged force constants →
metrics. The two that evaluate the model carry the FireWorks category ``gpu_category`` (default
``tdphonon-gpu``), so they go to GPU workers; sampling and metrics carry ``cpu_category`` (default
``tdphonon-cpu``) and run on any worker that lists it (the GPU worker of ``my_fworker.yaml`` lists
both, so one GPU worker can finish a material alone). A worker without a category takes any job.
(FireWorks matches a *list* of worker categories with ``$in``, so jobs without ``_category``
would never be pulled by a worker with several categories: every job gets one.)

Every job's metadata (copied by jobflow into the firework spec) holds the campaign name, the
material label and the duplicate-detection key, so the launchpad can be queried by them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from jobflow import Flow, Maker
from pymatgen.core import Structure

from tdphonon.harmonic import HarmonicSettings
from tdphonon.jobs import (
    force_constants_job,
    harmonic_phonons_job,
    harmonic_settings_from_dict,
    metrics_job,
    sampling_job,
    settings_digest,
    settings_digests,
)
from tdphonon.renormalize import TDPHSettings
from tdphonon.schemas import dedup_key
from tdphonon.structures import load_structure, structure_fingerprint

__all__ = ["TDPhononMaker"]


@dataclass
class TDPhononMaker(Maker):
    """Maker of the temperature-dependent phonon flow of one material.

    Parameters
    ----------
    name
        Flow name prefix.
    model
        Model spec (:func:`tdphonon.potentials.load_potential`), resolved on the worker.
    temperatures
        K.
    harmonic_settings
        Overrides of :class:`~tdphonon.harmonic.HarmonicSettings` (plain dict: serialisable).
    tdph_settings
        Overrides of :class:`~tdphonon.renormalize.TDPHSettings` (plain dict).
    device
        ``None``: each worker picks CUDA when it has it, else CPU (``TDPHONON_DEVICE`` overrides).
    gpu_category
        FireWorks ``_category`` of the model-evaluating jobs (``None``: no category).
    cpu_category
        FireWorks ``_category`` of the light jobs (sampling, metrics).
    campaign
        Campaign name stored in every job's metadata and in the document.
    """

    name: str = "tdphonon"
    model: str = "default"
    temperatures: tuple[float, ...] = (300.0,)
    harmonic_settings: dict[str, Any] = field(default_factory=dict)
    tdph_settings: dict[str, Any] = field(default_factory=dict)
    device: str | None = None
    gpu_category: str | None = "tdphonon-gpu"
    cpu_category: str | None = "tdphonon-cpu"
    campaign: str | None = None

    def __post_init__(self) -> None:
        # validate early (on the submitting machine), with the same code the workers use
        self.harmonic = harmonic_settings_from_dict({**HarmonicSettings().to_dict(), **self.harmonic_settings})
        self.tdph = TDPHSettings.from_dict({**TDPHSettings().to_dict(), **self.tdph_settings})
        if not self.temperatures:
            raise ValueError("at least one temperature is needed")

    def settings_digest(self) -> str:
        """Digest of all settings that determine the result (besides structure and model)."""
        return settings_digest(self.harmonic.to_dict(), self.tdph.to_dict(), self.temperatures)

    def key(self, structure: Structure, model_sha256: str) -> str:
        """Duplicate-detection key of ``structure`` computed with this maker and model."""
        return dedup_key(structure_fingerprint(structure), model_sha256, self.settings_digest())

    def keys(self, structure: Structure, model_sha256: str) -> list[str]:
        """:meth:`key` first, then the keys earlier versions gave the same run (:func:`settings_digests`)."""
        fp = structure_fingerprint(structure)
        return [dedup_key(fp, model_sha256, d) for d in
                settings_digests(self.harmonic.to_dict(), self.tdph.to_dict(), self.temperatures)]

    def make(self, structure: Structure | str, label: str | None = None, model_sha256: str | None = None,
             metadata: dict[str, Any] | None = None) -> Flow:
        """Flow for one material.

        Parameters
        ----------
        structure
            pymatgen Structure or a file.
        label
            Material name (default: the reduced formula).
        model_sha256
            When given, the duplicate-detection key is computed and stored in the job metadata.
        metadata
            Extra metadata for every job (and so every firework spec).
        """
        struct = structure if isinstance(structure, Structure) else load_structure(structure, label)
        label = label or struct.composition.reduced_formula
        temps = [float(t) for t in self.temperatures]
        hs = self.harmonic.to_dict()
        ts = self.tdph.to_dict()
        meta = {"tdphonon_label": label, "tdphonon_campaign": self.campaign, **(metadata or {})}
        if model_sha256:
            meta["tdphonon_key"] = self.key(struct, model_sha256)

        harm = harmonic_phonons_job(struct, self.model, hs, label, self.device)
        harm.name = f"{label} harmonic phonons"
        samp = sampling_job(harm.output, temps, ts, label)
        samp.name = f"{label} sampling"
        fcs = force_constants_job(harm.output, samp.output, self.model, temps, ts, label, self.device)
        fcs.name = f"{label} force constants"
        upstream = [{"step": "harmonic", "job_uuid": harm.uuid}, {"step": "sampling", "job_uuid": samp.uuid},
                    {"step": "force_constants", "job_uuid": fcs.uuid}]
        met = metrics_job(harm.output, fcs.output, ts, label, self.campaign, upstream)
        met.name = f"{label} metrics"
        jobs = [harm, samp, fcs, met]
        for j in jobs:
            j.metadata.update(meta)
            j.metadata["tdphonon_step"] = j.name.removeprefix(f"{label} ")
        for cat, group in ((self.gpu_category, (harm, fcs)), (self.cpu_category, (samp, met))):
            if cat:
                for j in group:
                    j.config.manager_config = {**j.config.manager_config, "_category": cat}
        return Flow(jobs, output=met.output, name=f"{self.name} {label}")
