"""Exceptions raised by tdphonon.

Every error names the material (``label``) it concerns, so that a campaign of thousands of
materials can report *which* input failed and *why* without a traceback hunt.
"""

from __future__ import annotations


class TDPhononError(ValueError):
    """Base class of tdphonon's errors about inputs or results.

    Parameters
    ----------
    label
        Name of the material / structure the error concerns (``None`` if not known).
    message
        What is wrong.
    """

    def __init__(self, label: str | None, message: str) -> None:
        self.label = label
        self.reason = message
        prefix = f"[{label}] " if label else ""
        super().__init__(prefix + message)


class StructureError(TDPhononError):
    """Malformed or unsupported crystal structure (overlaps, partial occupancy, not 3D periodic...)."""


class UnsupportedElementsError(StructureError):
    """The structure contains elements the model was not trained on."""


class ModelLoadError(TDPhononError):
    """A model spec could not be resolved or loaded."""


class UnphysicalForcesError(TDPhononError):
    """NaN/inf or absurdly large forces (MLIP extrapolation, overlapping atoms)."""


class RelaxationError(TDPhononError):
    """Relaxation did not converge within its step budget, or broke the symmetry."""


class SamplingError(TDPhononError):
    """Displacement sampling produced unphysical configurations (too close atoms, huge amplitudes)."""


class FeatureDataError(TDPhononError):
    """A data table that the matminer featurizers need (shipped with matminer) is missing or empty."""
