"""Fine-tuning as a chain: dataset → train → evaluate (plain functions, jobflow jobs, a Maker).

:func:`read_sources` turns paths into :class:`~tdphonon.finetune.sources.HarmonicEntry` objects
(a file, an MDR-style database folder, or a reference tree like ``../shared/reference``);
:func:`make_dataset`, :func:`train` and :func:`evaluate` are what ``tdphonon finetune
dataset|train|evaluate`` call; :class:`FineTuneMaker` chains the same three steps as a jobflow flow
whose training job carries the GPU category.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jobflow import Flow, Maker, job

from tdphonon.errors import TDPhononError
from tdphonon.evaluation import ReferenceSet
from tdphonon.finetune.dataset import DatasetSettings, build_dataset, load_dataset, needs_base_model, write_dataset
from tdphonon.finetune.evaluate import evaluate_models, parity_plot
from tdphonon.finetune.sources import (
    DatabaseReport,
    HarmonicEntry,
    SkippedEntry,
    read_database,
    read_entry,
    read_reference_collection,
)
from tdphonon.finetune.train import FineTuneSettings, fine_tune

__all__ = ["FineTuneMaker", "evaluate", "make_dataset", "read_sources", "train", "validation_references"]

_REFERENCE_TREE = ("phonopy", "phono3py", "alamode")


def read_sources(paths: Sequence[str | Path], labels: Sequence[str] | None = None) -> DatabaseReport:
    """Entries from files, MDR-style folders (one entry per sub-folder) or reference trees."""
    rep = DatabaseReport()
    for p in map(Path, paths):
        if p.is_dir() and any((p / d).is_dir() for d in _REFERENCE_TREE):
            sub = read_reference_collection(p, labels)
        elif p.is_dir() and any(c.is_dir() for c in p.iterdir()):
            sub = read_database(p, labels)
        else:
            sub = DatabaseReport()
            try:
                sub.entries.append(read_entry(p))
            except Exception as exc:  # reported, never silently included
                sub.skipped.append(SkippedEntry(p.name, str(p), f"{type(exc).__name__}: {exc}"))
        rep.entries += sub.entries
        rep.skipped += sub.skipped
    return rep


def label_potential(settings: DatasetSettings, base_model: str | None, device: str | None = None):
    """The base model loaded for the data labels, or ``None`` when the settings do not need it.

    Only base-anharmonic thermal labels and replay structures run a model while building the data set
    (:func:`~tdphonon.finetune.dataset.needs_base_model`).
    """
    if not needs_base_model(settings):
        return None
    if not base_model:
        raise ValueError("the data set needs the base model (--base-model) for its base-anharmonic thermal labels or "
                         "replay structures")
    from tdphonon.potentials import load_potential

    return load_potential(base_model) if device is None else load_potential(base_model, device=device)


def make_dataset(paths: Sequence[str | Path], out: str | Path, settings: DatasetSettings | None = None,
                 labels: Sequence[str] | None = None, overwrite: bool = False,
                 base_model: str | None = None) -> dict[str, Any]:
    """Read sources, generate the force–displacement data, write them; returns the manifest.

    ``base_model`` (any model spec of :func:`~tdphonon.potentials.load_potential`) is loaded only when
    the labels need it (base-anharmonic thermal labels, replay structures).
    """
    s = settings or DatasetSettings()
    pot = label_potential(s, base_model)
    rep = read_sources(paths, labels)
    ds = build_dataset(list(rep.entries) + list(rep.skipped), s, pot)
    mpath = write_dataset(ds, out, overwrite=overwrite)
    return json.loads(Path(mpath).read_text())


def validation_references(manifest: dict[str, Any], paths: Sequence[str | Path]) -> list[ReferenceSet]:
    """DFT reference sets of a data set's validation compounds, read from the data set's sources.

    ``paths`` are the sources the data set was built from (files, MDR-style folders, reference
    trees: what :func:`read_sources` takes); only the validation labels of ``manifest`` are read.

    Raises
    ------
    TDPhononError
        The data set has no validation compounds, or a validation set is not found or not readable
        in ``paths``.
    """
    labels = sorted(lab for c in (manifest.get("compounds") or {}).values() if c.get("split") == "val"
                    for lab in c.get("labels", []))
    if not labels:
        raise TDPhononError(None, "the data set has no validation compounds (built with val_fraction 0?): "
                                  "phonon-MAE selection needs some")
    rep = read_sources(paths, labels)
    found = {e.label: e for e in rep.entries if e.label in labels}
    missing = [lab for lab in labels if lab not in found]
    if missing:
        why = {s.label: s.reason for s in rep.skipped if s.label in missing}
        raise TDPhononError(None, f"validation reference sets {missing} not found in {[str(p) for p in paths]}"
                                  + (f" ({why})" if why else "") + ": give the sources the data set was built from")
    return [_as_reference(found[lab]) for lab in labels]


def train(dataset_dir: str | Path, base_model: str, out: str | Path, settings: FineTuneSettings | None = None,
          name: str | None = None, progress: Callable | None = None, resume: bool = True,
          references: Sequence[str | Path] | None = None) -> dict[str, Any]:
    """Fine-tune ``base_model`` on a data set folder (train / val splits); returns the model card.

    ``references`` (the data set's sources) give the DFT reference sets of the validation compounds
    (:func:`validation_references`): needed for ``settings.selection == "phonon_mae"``; with force
    selection they are read too when given, and their frequency MAE is recorded every epoch.
    """
    s = settings or FineTuneSettings()
    data = load_dataset(dataset_dir, splits=["train", "val"])
    manifest = json.loads((Path(dataset_dir) / "manifest.json").read_text())
    summary = {k: manifest.get(k) for k in ("splits", "counts", "settings", "sources", "compounds")
               if k in manifest}
    summary["dataset_dir"] = str(Path(dataset_dir).resolve())
    refs = None
    if references or s.selection == "phonon_mae":
        if not references:
            raise TDPhononError(None, "selection 'phonon_mae' needs the data set's sources (references) to read "
                                      "the validation compounds' DFT force constants from")
        refs = validation_references(manifest, references)
    res = fine_tune(base_model, data.get("train", []), data.get("val", []), out, s,
                    data_manifest=summary, name=name, progress=progress, resume=resume, val_references=refs)
    return res.card


def _as_reference(e: HarmonicEntry) -> ReferenceSet:
    return ReferenceSet(name=e.label, path=str(e.source), phonon=e.phonon, functional=e.functional)


def evaluate(paths: Sequence[str | Path], models: dict[str, str], heldout: Sequence[str], out: str | Path | None = None,
             labels: Sequence[str] | None = None, device: str | None = "cpu") -> dict[str, Any]:
    """Frequency errors of ``models`` (e.g. ``{"before": base, "after": finetuned}``) on the sources."""
    rep = read_sources(paths, labels)
    refs = [_as_reference(e) for e in rep.entries]
    result = evaluate_models(models, refs, heldout, device=device)
    result["skipped"] = [s.to_dict() for s in rep.skipped]
    if out is not None:
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1, default=str))
        parity_plot(result, out.with_suffix(".png"))
    return result


# --------------------------------------------------------------------------------------------
# jobflow
# --------------------------------------------------------------------------------------------
@job
def dataset_job(paths: list[str], out: str, settings: dict, labels: list[str] | None = None,
                base_model: str | None = None) -> dict:
    """Data-set step (light; runs the base model only for base-anharmonic thermal labels and replay structures)."""
    manifest = make_dataset(paths, out, DatasetSettings.from_dict(settings), labels, overwrite=True,
                            base_model=base_model)
    return {"dataset_dir": str(out), "manifest": manifest}


@job
def train_job(dataset: dict, base_model: str, out: str, settings: dict, name: str | None = None,
              references: list[str] | None = None) -> dict:
    """Training step (GPU); ``references``: the sources, read for phonon-MAE selection."""
    st = FineTuneSettings(**settings)
    card = train(dataset["dataset_dir"], base_model, out, st, name=name,
                 references=references if st.selection == "phonon_mae" else None)
    return {"model_dir": str(Path(out) / "model"), "card": card}


@job
def evaluate_job(trained: dict, base_model: str, paths: list[str], heldout: list[str], out: str,
                 labels: list[str] | None = None) -> dict:
    """Evaluation step: base vs fine-tuned on held-out and training compounds."""
    res = evaluate(paths, {"before": base_model, "after": trained["model_dir"]}, heldout, out, labels)
    return {k: res[k] for k in ("heldout", "train")} | {
        key: {"mae_thz_heldout": m["mae_thz_heldout"], "mae_thz_train": m["mae_thz_train"],
              "model": m["model"], "residual_vs_error": m["residual_vs_error"]}
        for key, m in res["models"].items()}


@dataclass
class FineTuneMaker(Maker):
    """dataset → train → evaluate for one base model and a set of DFT sources."""

    name: str = "tdphonon finetune"
    base_model: str = "M3GNet-MP-2021.2.8-PES"
    dataset_settings: dict[str, Any] = field(default_factory=dict)
    train_settings: dict[str, Any] = field(default_factory=dict)
    gpu_category: str | None = "tdphonon-gpu"
    cpu_category: str | None = "tdphonon-cpu"
    model_name: str | None = None

    def make(self, paths: Sequence[str | Path], out_dir: str | Path, labels: Sequence[str] | None = None) -> Flow:
        out = Path(out_dir)
        # validated here; the imaginary-mode policy of thermal configurations stays at its default
        ds_settings = {k: v for k, v in dataclasses.asdict(DatasetSettings(**self.dataset_settings)).items()
                       if k != "policy"}
        tr_settings = FineTuneSettings(**self.train_settings).to_dict()
        p = [str(x) for x in paths]
        lab = list(labels) if labels else None
        ds = dataset_job(p, str(out / "dataset"), ds_settings, lab, self.base_model)
        ds.name = "finetune dataset"
        tr = train_job(ds.output, self.base_model, str(out / "train"), tr_settings, self.model_name, p)
        tr.name = "finetune train"
        ev = evaluate_job(tr.output, self.base_model, p, list(ds_settings.get("held_out", ())),
                          str(out / "evaluation.json"), lab)
        ev.name = "finetune evaluate"
        for j, cat in ((ds, self.cpu_category), (tr, self.gpu_category), (ev, self.cpu_category)):
            if cat:
                j.config.manager_config = {**j.config.manager_config, "_category": cat}
        return Flow([ds, tr, ev], output=ev.output, name=self.name)
