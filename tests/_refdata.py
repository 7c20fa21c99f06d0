"""Locations of the shared DFT reference data and helpers to load it in tests.

The data live in ``../shared/reference`` beside the checkout (read-only, not part of the repo).
Tests that need them use :data:`requires_reference` (skip with a reason when absent) and the
``shared`` marker.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from conftest import REFERENCE, requires_reference  # noqa: F401  (one definition of the paths)

PHONOPY_TEST = REFERENCE / "phonopy" / "test"
NACL_FD = PHONOPY_TEST / "phonopy_params_NaCl-fd.yaml.xz"
SI = PHONOPY_TEST / "phonopy_params_Si.yaml"
SRTIO3 = PHONOPY_TEST / "phonopy_SrTiO3.yaml.xz"


def load_phonopy(path: Path):
    """phonopy object of a DFT set with its force constants (NAC off: MLIPs have no Born charges)."""
    import phonopy

    return phonopy.load(str(path), produce_fc=True, is_nac=False, log_level=0)


def symmetric_reference(path: Path):
    """(phonon, projector, Φ⁰) with Φ⁰ projected onto the symmetric (space group + sum rule) subspace.

    The phonopy object carries the projected Φ⁰, so an analytic potential built from it has exactly
    symmetric harmonic force constants.
    """
    from tdphonon.sampling import FCProjector, full_force_constants

    ph = load_phonopy(path)
    proj = FCProjector.from_phonopy(ph)
    fc0 = proj.project(full_force_constants(ph))
    ph.force_constants = np.array(fc0, order="C")
    return ph, proj, fc0
