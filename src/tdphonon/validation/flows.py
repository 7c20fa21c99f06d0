"""The validation branch as jobflow jobs and a Maker (a flow branch separate from the ML campaign).

Four jobs per material (:class:`ValidationMaker`):

1. ``reference harmonic`` — relax + finite-displacement Φ₂ with the reference calculator
   (category ``dft_category``, default ``tdphonon-dft``: DFT/CPU workers, never GPU ones);
2. ``configurations`` — displaced supercells for the anharmonic fit (``cpu_category``);
3. ``reference forces`` — forces of those supercells (``dft_category``);
4. ``anharmonic`` — hiPhive fit, SCPH at each T, κ_L (HA+3ph, SCPH+3ph) and, when the ML result of
   the same material is given, the ML-vs-reference comparison (``cpu_category``).

Arrays (force constants, displacements, forces) are ``data`` fields (GridFS in production). The
calculator is a spec string resolved on the worker (:func:`tdphonon.validation.calculators.reference_potential`).
The branch reads the screening output of ``tdphonon analyze`` (``candidates/candidates.json``)
like any material list and is submitted like any campaign (``tdphonon validate``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from jobflow import Flow, Maker, Response, job
from pymatgen.core import Structure

from tdphonon.validation.pipeline import (
    ValidationSettings,
    _configurations,
    _phonon,
    anharmonic_step,
    configurations_step,
    forces_step,
    harmonic_from_forces,
    harmonic_setup,
    harmonic_step,
)

__all__ = ["ValidationMaker", "settings_from_dict"]

VALIDATION_STEP = "validation"


def settings_from_dict(d: Mapping[str, Any] | None) -> ValidationSettings:
    """:class:`ValidationSettings` from overrides (JSON-able: lists for tuples, shells as dict)."""
    d = dict(d or {})
    if isinstance(d.get("shells"), Mapping):
        d["shells"] = tuple((int(k), int(v)) for k, v in d["shells"].items())
    for key in ("temperatures",):
        if key in d:
            d[key] = tuple(float(x) for x in d[key])
    for key in ("kappa_mesh", "scph_q_mesh"):
        if d.get(key) is not None:
            d[key] = tuple(int(x) for x in d[key])
    if "kappa_convergence_meshes" in d:
        d["kappa_convergence_meshes"] = tuple(tuple(int(x) for x in m) for m in d["kappa_convergence_meshes"])
    if d.get("supercell_matrix") is not None:
        d["supercell_matrix"] = tuple(tuple(int(x) for x in row) if np.ndim(row) else int(row)
                                      for row in d["supercell_matrix"])
    return ValidationSettings(**d)


def _arrays(d: Mapping[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    return {k: (np.asarray(v).tolist() if k in keys else v) for k, v in d.items()}


@job(data=["force_constants"])
def reference_harmonic_job(structure: Structure | Mapping, calculator: str, settings: Mapping | None = None,
                           label: str | None = None) -> dict[str, Any]:
    """Relaxation and finite-displacement Φ₂ with the reference calculator."""
    from tdphonon.validation.calculators import reference_potential

    s = Structure.from_dict(structure) if isinstance(structure, Mapping) else structure
    out = harmonic_step(s, reference_potential(calculator), settings_from_dict(settings),
                        label or s.composition.reduced_formula)
    return _arrays(out, ("force_constants",))


@job(data=["displacements", "structures"])
def configurations_job(harmonic: Mapping[str, Any], settings: Mapping | None = None,
                       label: str | None = None, structures: bool = False) -> dict[str, Any]:
    """Displaced configurations for the anharmonic fit (``structures``: also as pymatgen Structures)."""
    out = configurations_step(harmonic, settings_from_dict(settings), label or harmonic["label"])
    if structures:
        from pymatgen.io.ase import AseAtomsAdaptor

        atoms = _configurations(_phonon(harmonic), out["displacements"])[1]
        out["structures"] = [AseAtomsAdaptor.get_structure(a) for a in atoms]
    return _arrays(out, ("displacements",))


@job(data=["displaced_structures"])
def harmonic_setup_job(structure: Structure, settings: Mapping | None = None, label: str | None = None) -> dict:
    """Supercell and finite-displacement supercells (computed by a static maker's jobs)."""
    return harmonic_setup(structure, settings_from_dict(settings), label or structure.composition.reduced_formula)


@job(data=["force_constants"])
def harmonic_from_forces_job(setup: Mapping[str, Any], forces: Mapping[str, Any]) -> dict[str, Any]:
    """Φ₂ from the static maker's forces of the displaced supercells."""
    return _arrays(harmonic_from_forces(setup, forces["forces"], forces.get("calculator")), ("force_constants",))


@job
def static_forces_job(structures: list, static_maker: Maker, label: str, step: str,
                      category: str | None = None) -> Response:
    """One ``static_maker`` job per structure (atomate2 style, like ``run_phonon_displacements``).

    The replacing flow's output is ``{"forces": [...], "force_calls", "calculator"}``; each static
    job carries ``category`` so it goes to the reference (DFT) workers.
    """
    jobs, forces = [], []
    for i, s in enumerate(structures):
        j = static_maker.make(s)
        j.append_name(f" {label} {step} {i + 1}/{len(structures)}")
        j.metadata.update({"tdphonon_label": label, "tdphonon_branch": VALIDATION_STEP,
                           "tdphonon_step": f"reference static {step}"})
        if category:
            j.config.manager_config = {**j.config.manager_config, "_category": category}
        jobs.append(j)
        forces.append(j.output.output.forces)
    ident = {"name": getattr(static_maker, "name", type(static_maker).__name__), "kind": "atomate2-static-maker",
             "maker": type(static_maker).__name__}
    return Response(replace=Flow(jobs, output={"forces": forces, "force_calls": len(jobs), "calculator": ident}))


@job(data=["forces"])
def reference_forces_job(harmonic: Mapping[str, Any], configurations: Mapping[str, Any], calculator: str,
                         label: str | None = None) -> dict[str, Any]:
    """Reference forces of the displaced configurations."""
    from tdphonon.validation.calculators import reference_potential

    out = forces_step(harmonic, np.asarray(configurations["displacements"]), reference_potential(calculator),
                      label or harmonic["label"])
    return _arrays(out, ("forces",))


@job(data=["force_constants", "scattering_rates"])
def anharmonic_job(harmonic: Mapping[str, Any], configurations: Mapping[str, Any], forces: Mapping[str, Any],
                   settings: Mapping | None = None, label: str | None = None, campaign: str | None = None,
                   ml_doc: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Fit, SCPH, κ_L and the comparison with the ML result: the validation document."""
    from tdphonon.potentials import hardware_info, package_versions
    from tdphonon.validation.compare import compare_with_ml

    label = label or harmonic["label"]
    res = anharmonic_step(harmonic, np.asarray(configurations["displacements"]), np.asarray(forces["forces"]),
                          settings_from_dict(settings), label)
    summary = res.summary()
    return {
        "label": label, "campaign": campaign, "formula": summary["formula"], "summary": summary,
        "comparison": compare_with_ml(summary, ml_doc),
        "structure": res.structure.as_dict(), "supercell_matrix": np.asarray(res.supercell_matrix).tolist(),
        "primitive_matrix": harmonic["primitive_matrix"],
        "force_constants": {"harmonic": np.asarray(res.fc2).tolist(),
                            "temperatures": sorted(res.fc2_temperature),
                            "scph": [np.asarray(res.fc2_temperature[t]).tolist() for t in sorted(res.fc2_temperature)]},
        "scattering_rates": _jsonable_arrays(res.gamma),
        "provenance": {"packages": package_versions(), "hardware": hardware_info("cpu")},
    }


def _jsonable_arrays(d: Any) -> Any:
    """Nested dicts of arrays → nested dicts of lists (for the data store)."""
    if isinstance(d, Mapping):
        return {str(k): _jsonable_arrays(v) for k, v in d.items()}
    return np.asarray(d).tolist() if isinstance(d, np.ndarray) else d


@dataclass
class ValidationMaker(Maker):
    """Maker of the validation branch of one material (see the module docstring).

    Parameters
    ----------
    name
        Flow name prefix.
    calculator
        Reference-calculator spec (``emt``, ``espresso:{...}``, ``gpaw:{...}`` or a model spec).
    settings
        Overrides of :class:`~tdphonon.validation.pipeline.ValidationSettings` (plain dict).
    campaign
        Campaign name stored with every job and document.
    dft_category, cpu_category
        FireWorks ``_category`` of the reference-calculator jobs and of the light jobs.
    static_maker
        An atomate2 static maker (VASP ``StaticMaker``, ``ForceFieldStaticMaker``, an ASE maker...):
        when given, every reference calculation is one of its jobs (on ``dft_category``) instead of
        ``calculator``; the structure must then be relaxed already (or give ``relax_maker``).
    relax_maker
        Optional atomate2 relax maker run first (its ``output.structure`` is used).
    """

    name: str = "tdphonon validation"
    calculator: str = "emt"
    settings: dict = field(default_factory=dict)
    campaign: str | None = None
    dft_category: str | None = "tdphonon-dft"
    cpu_category: str | None = "tdphonon-cpu"
    static_maker: Maker | None = None
    relax_maker: Maker | None = None

    def make(self, structure: Structure, label: str | None = None, ml_doc: Mapping[str, Any] | None = None,
             metadata: Mapping[str, Any] | None = None) -> Flow:
        """Flow for one material; ``ml_doc``: the ML campaign's document of it (for the comparison)."""
        label = label or structure.composition.reduced_formula
        settings_from_dict(self.settings)  # fail at submission, not on the worker
        ml = None
        if ml_doc is not None:
            # a plain dict (no MSON class markers): the job must not rebuild a TDPhononDoc from it
            ml = {k: v for k, v in ml_doc.items() if k not in ("force_constants", "_job", "structure")
                  and not k.startswith("@")}
        meta = {"tdphonon_label": label, "tdphonon_campaign": self.campaign, "tdphonon_branch": VALIDATION_STEP,
                **dict(metadata or {})}
        if self.static_maker is None:
            harm = reference_harmonic_job(structure, self.calculator, self.settings, label)
            harm.name = f"{label} reference harmonic"
            conf = configurations_job(harm.output, self.settings, label)
            conf.name = f"{label} configurations"
            frc = reference_forces_job(harm.output, conf.output, self.calculator, label)
            frc.name = f"{label} reference forces"
            dft, light, pre = [harm, frc], [conf], []
        else:
            pre = []
            start = structure
            if self.relax_maker is not None:
                rel = self.relax_maker.make(structure)
                rel.metadata.update({**meta, "tdphonon_step": "reference relax"})
                if self.dft_category:
                    rel.config.manager_config = {**rel.config.manager_config, "_category": self.dft_category}
                pre.append(rel)
                start = rel.output.structure
            setup = harmonic_setup_job(start, self.settings, label)
            setup.name = f"{label} harmonic setup"
            fd = static_forces_job(setup.output["displaced_structures"], self.static_maker, label, "harmonic",
                                   self.dft_category)
            fd.name = f"{label} reference harmonic statics"
            harm = harmonic_from_forces_job(setup.output, fd.output)
            harm.name = f"{label} reference harmonic"
            conf = configurations_job(harm.output, self.settings, label, structures=True)
            conf.name = f"{label} configurations"
            frc = static_forces_job(conf.output["structures"], self.static_maker, label, "configurations",
                                    self.dft_category)
            frc.name = f"{label} reference forces"
            dft, light = [], [setup, fd, harm, conf, frc]
        anh = anharmonic_job(harm.output, conf.output, frc.output, self.settings, label, self.campaign, ml)
        anh.name = f"{label} anharmonic"
        light.append(anh)
        own = [*dft, *light]
        for j in own:
            j.metadata.update(meta)
            j.metadata["tdphonon_step"] = j.name.removeprefix(f"{label} ")
        for cat, group in ((self.dft_category, dft), (self.cpu_category, light)):
            if cat:
                for j in group:
                    j.config.manager_config = {**j.config.manager_config, "_category": cat}
        return Flow([*pre, *own], output=anh.output, name=f"{self.name} {label}")
