"""Pydantic schemas of the documents a campaign stores (one :class:`TDPhononDoc` per material).

The document is small: metrics, settings, seeds, model identity, provenance, timings and a few
frequencies. Big arrays (force constants, displacements) are fields named ``force_constants`` /
``displacements`` that jobflow moves to the ``data`` store (GridFS in production) through the jobs'
``data=`` declaration, so a document never approaches MongoDB's 16 MB limit.

Units: THz, eV, Å, K; thermal properties in kJ/mol (F) and J/K/mol (S, Cv) per primitive cell.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from pydantic import BaseModel, Field

__all__ = ["TDPhononDoc", "TemperatureDoc", "dedup_key"]

SCHEMA_VERSION = "1"


def dedup_key(structure_fingerprint: str, model_sha256: str, settings_digest: str) -> str:
    """Identity of one calculation: (structure fingerprint, model sha256, settings digest) hashed.

    Two submissions with the same key would compute the same numbers; the campaign layer refuses
    the second one.
    """
    payload = json.dumps([structure_fingerprint, model_sha256, settings_digest])
    return hashlib.sha256(payload.encode()).hexdigest()


class TemperatureDoc(BaseModel):
    """Results at one temperature."""

    temperature: float = Field(description="K")
    r_full: float = Field(description="relative Frobenius change of the significant force constants (Eq. 3)")
    r_full_error: float | None = Field(None, description="standard error of r_full (None: not estimated)")
    r_full_noise_floor: float | None = None
    r_onsite_max: float = Field(description="largest per-atom on-site change (Eq. 4)")
    r_onsite_max_error: float | None = None
    r_onsite_sites: list[dict[str, Any]] = Field(
        default_factory=list, description="per symmetry-distinct site: index, element, multiplicity, r_onsite")
    frequency_shift: float = Field(description="relative L2 shift of commensurate-q frequencies")
    frequency_shift_error: float | None = None
    anharmonicity: float | None = Field(None, description="σᴬ from the same samples")
    converged: bool | None = Field(None, description="self-consistent runs only")
    imaginary_fixed_point: bool | None = Field(
        None, description="self-consistent runs only: converged, but Φ(T) still has imaginary modes (a fixed point "
                          "of the imaginary-mode policy, not a SCHA solution)")
    n_iterations: int = 1
    force_calls: int = 0
    hessian_calls: int = 0
    seeds: list[int] = Field(default_factory=list)
    min_frequency_thz: float | None = None
    named_frequencies: dict[str, list[float]] = Field(default_factory=dict, description="THz at Γ, X, M, ...")
    thermal: dict[str, float] = Field(default_factory=dict, description="F, S, Cv of Φ(T) at T")
    mode_report: dict[str, Any] = Field(default_factory=dict)
    outliers: list[dict[str, Any]] = Field(default_factory=list)
    n_clipped_atoms: int = Field(0, description="atom displacements shortened to the cap (cap_mode='clip'), "
                                                "summed over the configurations of every iteration")
    timings: dict[str, float] = Field(default_factory=dict)


class TDPhononDoc(BaseModel):
    """One material of a campaign: everything needed to trust, reproduce and query the result."""

    schema_version: str = SCHEMA_VERSION
    label: str
    campaign: str | None = None
    formula: str
    elements: list[str]
    nelements: int
    nsites: int
    spacegroup_symbol: str
    spacegroup_number: int
    crystal_system: str
    structure: dict[str, Any] = Field(description="pymatgen Structure (as_dict) the phonons were computed for")
    structure_fingerprint: str
    input_structure_fingerprint: str | None = None
    supercell_matrix: list[list[int]]
    primitive_matrix: list[list[float]] | None = None
    n_atoms_supercell: int
    model: dict[str, Any] = Field(description="model identity: name, kind, sha256, source, package versions")
    model_sha256: str
    harmonic_settings: dict[str, Any]
    tdph_settings: dict[str, Any]
    settings_digest: str
    dedup_key: str
    harmonic: dict[str, Any] = Field(default_factory=dict,
                                     description="0 K summary: imaginary modes, named frequencies, relaxation, "
                                                 "step_check (with HarmonicSettings.check_displacement)")
    temperatures: list[TemperatureDoc]
    r_full_max: float = Field(description="max over temperatures (for queries)")
    r_onsite_max: float = Field(description="max over temperatures and sites (for queries)")
    force_constants: dict[str, Any] = Field(
        default_factory=dict,
        description="compact Φ⁰ and Φ(T) (n_prim, N, 3, 3) eV/Å², keys '0' and temperatures; moved to the "
                    "data store (GridFS)")
    provenance: dict[str, Any] = Field(default_factory=dict,
                                       description="package versions, hardware, jobflow/FireWorks ids, times")
    timings: dict[str, float] = Field(default_factory=dict, description="seconds per step")
