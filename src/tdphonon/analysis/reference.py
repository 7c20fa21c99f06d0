"""ML-vs-DFT harmonic check behind the paper's outlier filter (> 20 % deviation is an outlier).

The ML phonons of a campaign document and a DFT reference set rarely share a cell: the campaign
relaxes and standardises the structure, the reference keeps its own setting and supercell. The
comparison is therefore made on the **frequency distribution**: both force-constant sets are
Fourier-interpolated on a uniform Γ-centred mesh of the same real-space density (phonopy length
mesh, no symmetry reduction), and the deviation is

    δ = ‖Q_ML − Q_DFT‖₂ / ‖Q_DFT‖₂

with Q the frequency quantile function at 200 evenly spaced probabilities (imaginary frequencies
enter as negative numbers). δ is independent of the cell setting and of the primitive-cell
choice; it is 0 for identical force constants and, e.g., 0.1 for frequencies uniformly 10 % off.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["frequency_quantiles", "harmonic_deviation", "reference_deviations"]

N_QUANTILES = 200


def frequency_quantiles(phonon, mesh_length: float = 15.0, n: int = N_QUANTILES) -> np.ndarray:
    """Quantiles (THz) of the frequencies on a uniform Γ-centred mesh of ``mesh_length`` Å (no symmetry)."""
    phonon.run_mesh(mesh_length, is_gamma_center=True, is_mesh_symmetry=False, with_eigenvectors=False)
    f = np.asarray(phonon.mesh.frequencies, dtype=float).ravel()
    return np.quantile(f, np.linspace(0.0, 1.0, n))


def harmonic_deviation(ml_phonon, dft_phonon, mesh_length: float = 15.0) -> float:
    """Relative deviation δ of the ML from the DFT frequency distribution (see the module docstring)."""
    q_ml = frequency_quantiles(ml_phonon, mesh_length)
    q_dft = frequency_quantiles(dft_phonon, mesh_length)
    return float(np.linalg.norm(q_ml - q_dft) / np.linalg.norm(q_dft))


def reference_deviations(docs_with_arrays: list[Mapping[str, Any]], references: Mapping[str, str | Path],
                         mesh_length: float = 15.0) -> tuple[dict[str, float], list[dict[str, str]]]:
    """δ for every document whose label has a reference path in ``references``.

    ``docs_with_arrays``: documents from ``query(..., load_arrays=True)``. Returns the deviations and
    the references that could not be used (label, path, reason).
    """
    from tdphonon.evaluation import load_reference_path
    from tdphonon.jobs import phonopy_from_output

    out: dict[str, float] = {}
    problems = []
    for d in docs_with_arrays:
        path = references.get(d["label"])
        if not path:
            continue
        try:
            ref = load_reference_path(path)
            ml = phonopy_from_output({"structure": d["structure"], "supercell_matrix": d["supercell_matrix"],
                                      "primitive_matrix": d["primitive_matrix"],
                                      "force_constants": d["force_constants"]["harmonic"]})
            out[d["label"]] = harmonic_deviation(ml, ref.phonon, mesh_length)
        except Exception as exc:  # reported in the analysis output, the material stays unfiltered
            problems.append({"label": d["label"], "path": str(path), "reason": f"{type(exc).__name__}: {exc}"})
    return out, problems
