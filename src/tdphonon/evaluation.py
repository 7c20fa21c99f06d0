"""Accuracy of ML harmonic phonons against DFT force-constant sets.

The ML force constants are computed on the *reference* structure and supercell (no relaxation,
phonopy finite displacements), and frequencies are compared on the q-points commensurate with that
supercell (where both sets are exact, no interpolation), excluding the three acoustic modes at Γ.
Non-analytical (Born) corrections are switched off on both sides: MLIPs have no Born charges.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from phonopy import Phonopy

from tdphonon.harmonic import commensurate_qpoints, compute_force_constants, frequencies_at
from tdphonon.potentials import Potential

#: Files phonopy (or phono3py, for the fc2 part) can load as a DFT harmonic reference.
REFERENCE_PATTERNS = ("phonopy_params*.yaml*", "phonopy_disp*.yaml", "phonopy*.yaml.xz", "phono3py_params*.yaml*",
                      "*phonopy_params*.yaml.xz")


@dataclass
class ReferenceSet:
    """A DFT harmonic force-constant set."""

    name: str
    path: str
    phonon: Phonopy
    functional: str | None = None

    @property
    def n_atoms_supercell(self) -> int:
        return len(self.phonon.supercell)


@contextmanager
def isolated_cwd() -> Iterator[None]:
    """Run phonopy / phono3py loaders in an empty temporary working directory.

    ``phonopy.load`` falls back to ``FORCE_SETS``, ``FORCE_CONSTANTS``, ``force_constants.hdf5``
    and ``BORN`` of the *current directory* when a file lacks them, which would silently attach
    unrelated data to a data set. Paths given to the loaders must be absolute. (Changes the process
    working directory for the duration: not thread-safe.)
    """
    old = os.getcwd()
    with tempfile.TemporaryDirectory(prefix="tdphonon-read-") as tmp:
        os.chdir(tmp)
        try:
            yield
        finally:
            os.chdir(old)


def _load_phonopy_like(p: Path) -> Phonopy:
    import phonopy

    if p.is_dir():
        disp = p / "phonopy_disp.yaml"
        fs = p / "FORCE_SETS"
        if not disp.exists() or not fs.exists():
            raise ValueError(f"{p}: no phonopy_disp.yaml + FORCE_SETS")
        ph = phonopy.load(str(disp), force_sets_filename=str(fs), is_nac=False, log_level=0, produce_fc=True)
    elif "phono3py" in p.name:
        ph = _load_phono3py_fc2(p)
    elif p.name.startswith("phonopy_disp_") and (p.parent / f"FORCE_SETS_{p.name[13:].split('.yaml')[0]}").exists():
        tag = p.name[13:].split(".yaml")[0]
        ph = phonopy.load(str(p), force_sets_filename=str(p.parent / f"FORCE_SETS_{tag}"), is_nac=False,
                          log_level=0, produce_fc=True)
    else:
        ph = phonopy.load(str(p), is_nac=False, log_level=0, produce_fc=True)
    return ph


def load_reference(path: str | Path, name: str | None = None) -> ReferenceSet:
    """Load one phonopy / phono3py data set and produce its (full) force constants.

    phono3py files are read with phono3py (fc2 part, symfc when the fc2 data are random
    displacements); phonopy files with ``phonopy.load``. Folders with ``phonopy_disp.yaml`` +
    ``FORCE_SETS`` (phonopy examples) are accepted too.

    Raises
    ------
    ValueError
        When the file holds no usable force sets / force constants.
    """
    p = Path(path).resolve()
    name = name or p.name.split(".yaml")[0]
    with isolated_cwd():  # phonopy.load would otherwise pick up FORCE_SETS/BORN of the current directory
        ph = _load_phonopy_like(p)
    if ph.force_constants is None:
        raise ValueError(f"{p}: no force constants could be produced")
    if ph.force_constants.shape[0] != ph.force_constants.shape[1]:
        from phonopy.harmonic.force_constants import compact_fc_to_full_fc

        ph.force_constants = compact_fc_to_full_fc(ph.primitive, ph.force_constants)
    return ReferenceSet(name=name, path=str(p), phonon=ph)


def _load_phono3py_fc2(path: Path) -> Phonopy:
    """fc2 of a phono3py yaml as a phonopy object (phonon supercell)."""
    try:
        import phono3py
    except ImportError as exc:
        raise ValueError(f"{path}: phono3py is needed to read this file (pip install phono3py)") from exc
    ph3 = phono3py.load(str(path), produce_fc=False, log_level=0, is_nac=False)
    ds = ph3.phonon_dataset
    if ds is None:  # no separate fc2 set: fc2 from the fc3 (supercell) displacements
        if ph3.dataset is None:
            raise ValueError(f"{path}: neither fc2 nor fc3 displacement data")
        ph3.produce_fc3(fc_calculator="symfc" if "displacements" in ph3.dataset else None)
        ph = Phonopy(ph3.unitcell, supercell_matrix=ph3.supercell_matrix, primitive_matrix=ph3.primitive_matrix)
        ph.force_constants = ph3.fc2
        return ph
    ph = Phonopy(ph3.unitcell, supercell_matrix=ph3.phonon_supercell_matrix,
                 primitive_matrix=ph3.primitive_matrix)
    ph.dataset = ds
    random = "displacements" in ds
    ph.produce_force_constants(fc_calculator="symfc" if random else None, show_drift=False,
                               fc_calculator_log_level=0)
    return ph


def load_spacegroup_set(folder: str | Path, sg: str) -> ReferenceSet:
    """``FORCE_SETS_<SG>`` + ``POSCAR_<SG>`` pair, supercell/primitive from ``DIMS.txt``.

    This is the layout of phonopy's test/spacegroups collection.
    """
    import ast

    import phonopy
    from phonopy.interface.calculator import read_crystal_structure

    folder = Path(folder)
    dims = {}
    for line in (folder / "DIMS.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            parts = line.split(None, 4)
            dims[parts[0]] = ([int(x) for x in parts[1:4]], parts[4].strip() if len(parts) > 4 else "identity")
    if sg not in dims:
        raise ValueError(f"{folder}: space group {sg} not listed in DIMS.txt")
    dim, pmat = dims[sg]
    unitcell, _ = read_crystal_structure(str(folder / f"POSCAR_{sg}"), interface_mode="vasp")
    prim = None if pmat == "identity" else np.array(ast.literal_eval(pmat), dtype=float)
    ph = phonopy.load(unitcell=unitcell, supercell_matrix=dim, primitive_matrix=prim if prim is not None else "P",
                      force_sets_filename=str(folder / f"FORCE_SETS_{sg}"), is_nac=False, log_level=0,
                      produce_fc=True)
    formula = "".join(f"{k}{v if v > 1 else ''}" for k, v in _count(unitcell.symbols).items())
    return ReferenceSet(name=f"{formula}-{sg}", path=str(folder / f"FORCE_SETS_{sg}"), phonon=ph)


def _count(symbols) -> dict:
    out: dict[str, int] = {}
    for s in symbols:
        out[s] = out.get(s, 0) + 1
    return out


def load_reference_path(path: str | Path) -> ReferenceSet:
    """:func:`load_reference`, or :func:`load_spacegroup_set` for a ``FORCE_SETS_<SG>`` file of that layout."""
    p = Path(path)
    if p.name.startswith("FORCE_SETS_") and (p.parent / "DIMS.txt").exists():
        return load_spacegroup_set(p.parent, p.name.removeprefix("FORCE_SETS_"))
    return load_reference(p)


def iter_reference_sets(root: str | Path):
    """Yield ``(name, loader)`` for every reference set below ``root`` (loading is deferred)."""
    for p in find_reference_sets(root):
        yield p.name.split(".yaml")[0], (lambda p=p: load_reference(p))
    for dims in sorted(Path(root).rglob("DIMS.txt")):
        for fs in sorted(dims.parent.glob("FORCE_SETS_*")):
            sg = fs.name.removeprefix("FORCE_SETS_")
            if (dims.parent / f"POSCAR_{sg}").exists():
                yield f"spacegroup-{sg}", (lambda d=dims.parent, sg=sg: load_spacegroup_set(d, sg))


def find_reference_sets(root: str | Path) -> list[Path]:
    """All candidate reference files/folders below ``root`` (phonopy and phono3py formats)."""
    root = Path(root)
    out: set[Path] = set()
    for pat in REFERENCE_PATTERNS:
        out.update(root.rglob(pat))
    for disp in root.rglob("phonopy_disp.yaml"):
        if (disp.parent / "FORCE_SETS").exists():
            out.discard(disp)
            out.add(disp.parent)
    return sorted(out)


@dataclass
class Comparison:
    """ML vs DFT harmonic phonons of one material."""

    name: str
    model: str
    n_atoms_supercell: int
    mae_thz: float
    rmse_thz: float
    max_abs_error_thz: float
    max_frequency_dft_thz: float
    max_frequency_ml_thz: float
    max_frequency_error_thz: float
    free_energy_error_kj_mol: float
    entropy_error_j_k_mol: float
    heat_capacity_error_j_k_mol: float
    seconds: float
    force_calls: int
    frequencies_dft: list
    frequencies_ml: list

    def to_dict(self, arrays: bool = True) -> dict:
        d = asdict(self)
        if not arrays:
            d.pop("frequencies_dft")
            d.pop("frequencies_ml")
        return d


def _nonacoustic(qpoints: np.ndarray, freqs: np.ndarray) -> np.ndarray:
    mask = np.ones_like(freqs, dtype=bool)
    for i, q in enumerate(qpoints):
        if np.allclose(q, np.round(q), atol=1e-8):
            mask[i, np.argsort(np.abs(freqs[i]))[:3]] = False
    return mask


def _thermal_300k(phonon: Phonopy, mesh: float = 30.0) -> tuple[float, float, float]:
    phonon.run_mesh(mesh)
    phonon.run_thermal_properties(temperatures=[300.0])
    _, free_energy, entropy, heat_capacity = phonon.thermal_properties.thermal_properties
    return float(free_energy[0]), float(entropy[0]), float(heat_capacity[0])


def ml_phonon_on_reference(ref: Phonopy, potential: Potential, displacement: float = 0.01,
                           label: str | None = None) -> Phonopy:
    """ML force constants on exactly the reference unit cell, supercell and primitive cell."""
    ph = Phonopy(ref.unitcell, supercell_matrix=ref.supercell_matrix, primitive_matrix=ref.primitive_matrix)
    compute_force_constants(ph, potential, displacement=displacement, label=label)
    return ph


def compare_with_reference(ref: ReferenceSet, potential: Potential, displacement: float = 0.01) -> Comparison:
    """ML harmonic phonons on the reference supercell vs the reference (see module docstring)."""
    t0 = time.perf_counter()
    calls0 = potential.force_calls
    ml = ml_phonon_on_reference(ref.phonon, potential, displacement, ref.name)
    seconds = time.perf_counter() - t0
    q = commensurate_qpoints(ref.phonon)
    f_ref = frequencies_at(ref.phonon, q)
    f_ml = frequencies_at(ml, q)
    mask = _nonacoustic(q, f_ref)
    err = (f_ml - f_ref)[mask]
    th_ref = _thermal_300k(ref.phonon)
    th_ml = _thermal_300k(ml)
    return Comparison(
        name=ref.name, model=potential.identity.name, n_atoms_supercell=len(ref.phonon.supercell),
        mae_thz=float(np.mean(np.abs(err))), rmse_thz=float(np.sqrt(np.mean(err**2))),
        max_abs_error_thz=float(np.max(np.abs(err))),
        max_frequency_dft_thz=float(f_ref.max()), max_frequency_ml_thz=float(f_ml.max()),
        max_frequency_error_thz=float(f_ml.max() - f_ref.max()),
        free_energy_error_kj_mol=th_ml[0] - th_ref[0], entropy_error_j_k_mol=th_ml[1] - th_ref[1],
        heat_capacity_error_j_k_mol=th_ml[2] - th_ref[2], seconds=seconds,
        force_calls=potential.force_calls - calls0,
        frequencies_dft=f_ref[mask].tolist(), frequencies_ml=f_ml[mask].tolist(),
    )
