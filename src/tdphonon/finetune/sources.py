"""Readers of DFT harmonic phonon data sets → :class:`HarmonicEntry` (force constants Φ_DFT + raw data).

Supported sources (all units converted to Å, eV/Å, eV/Å², amu):

* phonopy: ``phonopy_params*.yaml(.xz)``; ``phonopy_disp.yaml`` + ``FORCE_SETS`` (+ ``BORN``);
  ``phonopy_disp_X.yaml`` + ``FORCE_SETS_X``; ``FORCE_CONSTANTS`` / ``force_constants.hdf5`` with
  the structure from a phonopy yaml; ``POSCAR-unitcell`` + ``FORCE_SETS`` + ``phonopy.conf``
  (``DIM``, ``PRIMITIVE_AXES``: the layout of the older MDR phonon database); phonopy's
  ``FORCE_SETS_<SG>`` + ``POSCAR_<SG>`` + ``DIMS.txt`` collection.
* phono3py: the fc2 part of ``phono3py_params*.yaml(.xz)`` (or fc2 from the fc3 supercell data
  when there is no separate fc2 set); the fc3 displacement data are kept as raw force sets.
* ALAMODE: ``DFSET`` files (``ux uy uz fx fy fz`` per atom, one block of NAT lines per
  configuration, **Bohr and Ry/Bohr**, ``#`` comments, optionally ``E_pot (eV): ...``) with the
  structure of an ALAMODE ``*.in`` file (``&general`` NAT/NKD/KD, ``&cell`` in Bohr with a leading
  scale factor, ``&position`` kind index + fractional coordinates) or of an ALAMODE ``*.xml``.
  Φ is the least-squares (symfc) fit of the harmonic set (the DFSET of an input with
  ``NORDER = 1``, or a file named ``*harmonic*``) on a phonopy object whose unit cell *is* the
  ALAMODE supercell (``supercell_matrix`` = identity, primitive cell detected); without a harmonic
  DFSET the harmonic IFCs of an ALAMODE xml are used (Ry/Bohr² → eV/Å²).
* A database folder (MDR phonon database layout): one sub-folder per material, labelled by the
  folder name, with one of the above inside (``mp-149/phonopy_params.yaml.xz``).

The phonopy / phono3py loading is that of :func:`tdphonon.evaluation.load_reference` (NAC off:
Φ is the supercell force-constant set that reproduces the DFT supercell forces; a ``BORN`` file is
recorded, not used). Every entry is checked (:func:`check_entry`): finite Φ of the right shape,
acoustic sum rule drift, frequencies finite and below 200 THz (unit errors), raw force sets of the
right shape. Unreadable or inconsistent entries raise :class:`DataError` naming the file; the
database iterators turn those into :class:`SkippedEntry` records (label + reason) and never
include them silently.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms
from ase.units import Bohr, Rydberg
from phonopy import Phonopy

from tdphonon.errors import TDPhononError
from tdphonon.evaluation import isolated_cwd
from tdphonon.sampling import commensurate_frequencies, full_force_constants, supercell_to_ase

__all__ = [
    "BOHR",
    "REFERENCE_FUNCTIONALS",
    "RY_PER_BOHR",
    "RY_PER_BOHR2",
    "AlamodeInput",
    "DataError",
    "DatabaseReport",
    "ForceSet",
    "HarmonicEntry",
    "SkippedEntry",
    "check_entry",
    "check_force_sets_file",
    "detect_functional",
    "estimate_energy0",
    "force_sets_from_dataset",
    "iter_database",
    "iter_reference_entries",
    "read_alamode",
    "read_alamode_input",
    "read_alamode_xml",
    "read_database",
    "read_dfset",
    "read_entry",
    "read_force_constants",
    "read_phono3py",
    "read_phonopy",
    "read_phonopy_conf_folder",
    "read_reference_collection",
    "read_spacegroup_set",
    "write_dfset",
]

#: Å per Bohr
BOHR: float = float(Bohr)
#: eV/Å per Ry/Bohr
RY_PER_BOHR: float = float(Rydberg / Bohr)
#: eV/Å² per Ry/Bohr²
RY_PER_BOHR2: float = float(Rydberg / Bohr**2)

#: Largest plausible phonon frequency (THz); above it the units of Φ are almost surely wrong.
MAX_FREQUENCY_THZ = 200.0
#: Largest tolerated acoustic-sum-rule drift max_i |Σ_j Φ_ij| / max_i |Φ_ii|.
MAX_ASR_DRIFT = 0.25

#: Functional of the sets in ``../shared/reference`` (relative paths), from its README.md; ``None``
#: where the README does not state one.
REFERENCE_FUNCTIONALS: dict[str, str] = {
    "phonopy/example/MgO": "PBE",
    "phonopy/example/Al2O3": "PBEsol",
    "phonopy/example/CaTiO3": "PBE",
    "phonopy/example/MgB2": "PBE",
    "phonopy/example/SiO2-HP": "PBE",
    "phonopy/example/ZnO": "PBE",
    "phonopy/example/Cr": "PBEsol",
    "phonopy/test/phonopy_params_Si.yaml": "PBE",
    "phonopy/test/phonopy_params_NaCl-fd.yaml.xz": "PBE",
    "phonopy/test/phonopy_params_NaCl-rd.yaml.xz": "PBE",
    "phonopy/test/phonopy_disp_SnO2.yaml": "PBEsol",
    "phono3py/phono3py_params_NaCl.yaml.xz": "PBEsol",
    "phono3py/NaCl-alm_phono3py_params_NaCl222_PBEsol_rd200.yaml.xz": "PBEsol",
    "phono3py/AlN-rd_phonopy_params_mp-661.yaml.xz": "PBEsol",
    "phono3py/phono3py_params_ZnTe.yaml.xz": "PBEsol",
    "alamode/SrTiO3": "PBEsol",
}


class DataError(TDPhononError):
    """A phonon data source is unreadable, malformed or inconsistent (the message names the file)."""


# --------------------------------------------------------------------------------------------
# data classes
# --------------------------------------------------------------------------------------------
@dataclass(eq=False)
class ForceSet:
    """DFT displacement–force data of one supercell (as computed, never regenerated).

    Attributes
    ----------
    displacements
        (n, N, 3) displacements from ``reference`` in Å.
    forces
        (n, N, 3) DFT forces in eV/Å.
    reference
        Undisplaced supercell (ASE ``Atoms``; same atom order as the arrays).
    energies
        (n,) total supercell energies in eV, or ``None`` when the source has none.
    kind
        ``"fd"`` (one displaced atom per configuration), ``"fd-pairs"`` (two, phono3py fc3 data),
        ``"random"`` (all atoms displaced) or ``"md+random"`` (ab-initio MD / large-amplitude sets,
        from the file name).
    source
        File the data come from.
    """

    displacements: np.ndarray
    forces: np.ndarray
    reference: Atoms
    energies: np.ndarray | None = None
    kind: str = "random"
    source: str = ""

    @property
    def n_configurations(self) -> int:
        return int(self.displacements.shape[0])

    @property
    def n_atoms(self) -> int:
        return int(self.displacements.shape[1])

    def summary(self) -> dict[str, Any]:
        """Counts and displacement / force magnitudes (JSON-serialisable)."""
        norms = np.linalg.norm(self.displacements, axis=-1)
        moved = norms > 1e-8
        return {
            "kind": self.kind, "source": self.source, "n_configurations": self.n_configurations,
            "n_atoms": self.n_atoms, "energies": self.energies is not None,
            "max_displacement": float(norms.max()) if norms.size else 0.0,
            "rms_displacement_moved_atoms": float(np.sqrt(np.mean(norms[moved] ** 2))) if moved.any() else 0.0,
            "max_force": float(np.linalg.norm(self.forces, axis=-1).max()) if self.forces.size else 0.0,
        }


@dataclass(eq=False)
class HarmonicEntry:
    """One material of a harmonic DFT phonon database.

    Attributes
    ----------
    label
        Name of the entry (database folder name, or file stem).
    phonon
        :class:`phonopy.Phonopy` carrying the *full* force constants Φ_DFT (N, N, 3, 3) in eV/Å² of
        its supercell (NAC off).
    source
        Main file or folder read.
    files
        Every file the entry was built from (for checksums).
    functional
        Exchange–correlation functional when known (``None`` otherwise).
    notes
        Free-text remarks (how Φ was obtained, Born charges present, checks).
    raw_displacement_sets
        DFT displacement–force data (:class:`ForceSet`), possibly on other supercells (phono3py).
    energy0
        Energy of the undisplaced supercell of ``phonon`` (eV) when the source gives it, else ``None``.
    born
        Path of a ``BORN`` file found with the data (not used for Φ).
    checks
        Results of :func:`check_entry` (ASR drift, frequency range, imaginary modes).
    """

    label: str
    phonon: Phonopy
    source: str
    files: list[str] = field(default_factory=list)
    functional: str | None = None
    notes: list[str] = field(default_factory=list)
    raw_displacement_sets: list[ForceSet] = field(default_factory=list)
    energy0: float | None = None
    born: str | None = None
    checks: dict[str, Any] = field(default_factory=dict)

    @property
    def force_constants(self) -> np.ndarray:
        """Full Φ (N, N, 3, 3) in eV/Å² (a copy)."""
        return full_force_constants(self.phonon)

    @property
    def n_atoms_supercell(self) -> int:
        return len(self.phonon.supercell)

    @property
    def formula(self) -> str:
        """Reduced chemical formula of the unit cell (pymatgen style, e.g. ``"SrTiO3"``)."""
        from pymatgen.core import Composition

        return Composition("".join(self.phonon.unitcell.symbols)).reduced_formula

    @property
    def spacegroup_number(self) -> int:
        """Space group number of the unit cell (spglib, symprec 1e-3)."""
        import spglib

        uc = self.phonon.unitcell
        ds = spglib.get_symmetry_dataset((np.asarray(uc.cell), np.asarray(uc.scaled_positions),
                                          np.asarray(uc.numbers)), symprec=1e-3)
        return int(ds.number) if ds is not None else 0

    @property
    def compound(self) -> str:
        """Compound identity used to split data sets: reduced formula + space group (``"NaCl-225"``)."""
        return f"{self.formula}-{self.spacegroup_number}"

    def reference_atoms(self) -> Atoms:
        """Undisplaced supercell of ``phonon`` as ASE ``Atoms`` (phonopy atom order)."""
        return supercell_to_ase(self.phonon.supercell)

    def summary(self) -> dict[str, Any]:
        """JSON-serialisable description (no arrays)."""
        return {
            "label": self.label, "compound": self.compound, "formula": self.formula, "source": self.source,
            "files": list(self.files), "functional": self.functional, "notes": list(self.notes),
            "n_atoms_supercell": self.n_atoms_supercell,
            "supercell_matrix": np.asarray(self.phonon.supercell_matrix).astype(int).tolist(),
            "energy0": self.energy0, "born": self.born, "checks": dict(self.checks),
            "raw_displacement_sets": [s.summary() for s in self.raw_displacement_sets],
        }


@dataclass(frozen=True)
class SkippedEntry:
    """An entry that could not be used, with the reason."""

    label: str
    path: str
    reason: str

    def to_dict(self) -> dict[str, str]:
        return {"label": self.label, "path": self.path, "reason": self.reason}


@dataclass
class DatabaseReport:
    """Entries read from a database folder and the ones skipped (with reasons)."""

    entries: list[HarmonicEntry] = field(default_factory=list)
    skipped: list[SkippedEntry] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"entries": [e.summary() for e in self.entries], "skipped": [s.to_dict() for s in self.skipped]}


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------
def _error(label: str | None, path: str | Path, what: str, exc: BaseException | None = None) -> DataError:
    msg = f"{path}: {what}"
    if exc is not None:
        detail = str(exc).strip().splitlines()
        msg += f" ({type(exc).__name__}: {detail[0] if detail else ''})"
    return DataError(label, msg)


def _classify(displacements: np.ndarray, source: str = "") -> str:
    name = Path(source).name.lower()
    if "md" in re.split(r"[^a-z0-9]+", name) or "aimd" in name:
        return "md+random"
    moved = (np.linalg.norm(displacements, axis=-1) > 1e-8).sum(axis=1)
    if moved.size and moved.max() <= 1:
        return "fd"
    if moved.size and moved.max() <= 2:
        return "fd-pairs"
    return "random"


def force_sets_from_dataset(dataset: dict | None, supercell, source: str = "",
                            label: str | None = None) -> list[ForceSet]:
    """Raw displacement–force arrays of a phonopy / phono3py dataset (type 1 or type 2).

    Type-1 sets give one configuration per displaced atom (``"fd"``) and, for phono3py fc3 data,
    one per displaced pair (``"fd-pairs"``); type-2 sets are returned as they are. Configurations
    without forces are left out; energies are kept only when every configuration of a set has one.
    """
    if not dataset:
        return []
    natom = len(supercell)
    reference = supercell_to_ase(supercell)
    out: list[ForceSet] = []
    if "displacements" in dataset:
        if dataset.get("forces") is None:
            return []
        u = np.asarray(dataset["displacements"], dtype=float)
        f = np.asarray(dataset["forces"], dtype=float)
        e = dataset.get("supercell_energies")
        e = None if e is None else np.asarray(e, dtype=float)
        if u.ndim != 3 or u.shape[1:] != (natom, 3) or f.shape != u.shape:
            raise _error(label, source, f"displacements {u.shape} / forces {f.shape} do not match the {natom}-atom "
                         "supercell")
        if e is not None and e.shape != (len(u),):
            raise _error(label, source, f"{e.shape} supercell energies for {len(u)} configurations")
        out.append(ForceSet(u, f, reference, e, _classify(u, source), source))
        return out
    singles: list[tuple[np.ndarray, np.ndarray, float | None]] = []
    pairs: list[tuple[np.ndarray, np.ndarray, float | None]] = []
    for first in dataset.get("first_atoms", []):
        d1 = np.zeros((natom, 3))
        d1[int(first["number"])] = first["displacement"]
        if first.get("forces") is not None:
            singles.append((d1, np.asarray(first["forces"], dtype=float), first.get("supercell_energy")))
        for second in first.get("second_atoms", []) or []:
            if second.get("forces") is None or second.get("included", True) is False:
                continue
            d2 = d1.copy()
            d2[int(second["number"])] += second["displacement"]
            pairs.append((d2, np.asarray(second["forces"], dtype=float), second.get("supercell_energy")))
    for kind, items in (("fd", singles), ("fd-pairs", pairs)):
        if not items:
            continue
        u = np.array([x[0] for x in items])
        f = np.array([x[1] for x in items])
        if f.shape != u.shape:
            raise _error(label, source, f"forces of shape {f.shape[1:]} for a {natom}-atom supercell")
        energies = [x[2] for x in items]
        e = None if any(v is None for v in energies) else np.asarray(energies, dtype=float)
        out.append(ForceSet(u, f, reference, e, kind, source))
    return out


def detect_functional(*paths: str | Path) -> str | None:
    """Functional named in file names (``PBEsol``, ``PBE``, ``LDA``, ``SCAN``) or in VASP ``INCAR`` files.

    ``INCAR*`` files are searched in the given folders (and their sub-folders, one level deep):
    ``GGA = PS`` → PBEsol, ``PE`` → PBE, ``91`` → PW91, ``RP`` → RPBE, ``METAGGA = SCAN`` / ``R2SCAN``.
    Without an explicit tag the functional depends on the POTCARs and ``None`` is returned.
    """
    for p in paths:
        for token in re.split(r"[^A-Za-z0-9]+", Path(p).name):
            for name in ("PBEsol", "PBE", "LDA", "r2SCAN", "SCAN"):
                if token.lower() == name.lower():
                    return name
    gga = {"PS": "PBEsol", "PE": "PBE", "91": "PW91", "RP": "RPBE", "AM": "AM05"}
    for p in paths:
        p = Path(p)
        folder = p if p.is_dir() else p.parent
        for incar in sorted([*folder.glob("INCAR*"), *folder.glob("*/INCAR*")]):
            try:
                text = incar.read_text(errors="replace")
            except OSError:
                continue
            tags = dict(re.findall(r"^\s*([A-Za-z]+)\s*=\s*([^\s#!;]+)", text, flags=re.MULTILINE))
            tags = {k.upper(): v.upper() for k, v in tags.items()}
            if "METAGGA" in tags:
                return {"SCAN": "SCAN", "R2SCAN": "r2SCAN"}.get(tags["METAGGA"], tags["METAGGA"])
            if "GGA" in tags:
                return gga.get(tags["GGA"], tags["GGA"])
    return None


def check_entry(entry: HarmonicEntry) -> dict[str, Any]:
    """Consistency checks of an entry; raises :class:`DataError` on gross problems.

    Rejects: Φ not finite or not (N, N, 3, 3); Φ identically zero; acoustic-sum-rule drift above
    :data:`MAX_ASR_DRIFT` (relative to the largest on-site block); non-finite frequencies or any
    |ν| > :data:`MAX_FREQUENCY_THZ` at the commensurate q-points (unit errors); raw force sets with
    the wrong shape or non-finite values. Imaginary modes are recorded, not rejected (cubic SrTiO3
    legitimately has them).

    Returns
    -------
    dict
        ``asr_drift``, ``min_frequency_thz``, ``max_frequency_thz``, ``n_imaginary_commensurate``
        (also stored in ``entry.checks``).
    """
    label, src = entry.label, entry.source
    ph = entry.phonon
    n = len(ph.supercell)
    try:
        fc = full_force_constants(ph)
    except Exception as exc:
        raise _error(label, src, "no usable force constants", exc) from exc
    if fc.shape != (n, n, 3, 3):
        raise _error(label, src, f"force constants of shape {fc.shape} for a {n}-atom supercell")
    if not np.all(np.isfinite(fc)):
        raise _error(label, src, "force constants contain NaN/inf")
    onsite = np.abs(fc[np.arange(n), np.arange(n)]).max()
    if onsite <= 0:
        raise _error(label, src, "force constants are identically zero")
    drift = float(np.abs(fc.sum(axis=1)).max() / onsite)
    if drift > MAX_ASR_DRIFT:
        raise _error(label, src, f"acoustic sum rule violated: max|Σ_j Φ_ij| = {drift:.3f} × max|Φ_ii|")
    qpts, freqs = commensurate_frequencies(ph.supercell, ph.primitive, fc)
    if not np.all(np.isfinite(freqs)):
        raise _error(label, src, "non-finite phonon frequencies")
    fmax = float(np.abs(freqs).max())
    if fmax > MAX_FREQUENCY_THZ:
        raise _error(label, src, f"phonon frequency of {fmax:.0f} THz > {MAX_FREQUENCY_THZ:.0f} THz (units?)")
    gamma = np.sort(np.abs(freqs[int(np.argmin(np.abs(qpts).sum(axis=1)))]))[:3]
    for s in entry.raw_displacement_sets:
        nat = len(s.reference)
        shape = s.displacements.shape
        if shape != s.forces.shape or len(shape) != 3 or shape[1:] != (nat, 3):
            raise _error(label, s.source or src, f"raw force set of shape {s.displacements.shape} / "
                         f"{s.forces.shape} for a {nat}-atom supercell")
        if not (np.all(np.isfinite(s.displacements)) and np.all(np.isfinite(s.forces))):
            raise _error(label, s.source or src, "raw force set contains NaN/inf")
        bad_e = s.energies is not None and (s.energies.shape != (s.n_configurations,)
                                            or not np.all(np.isfinite(s.energies)))
        if bad_e:
            raise _error(label, s.source or src, "raw energies do not match the configurations")
    checks = {
        "asr_drift": drift,
        "min_frequency_thz": float(freqs[:, 0].min()) if freqs.size else 0.0,
        "max_frequency_thz": float(freqs.max()) if freqs.size else 0.0,
        "gamma_acoustic_thz": [float(x) for x in gamma],
        "n_imaginary_commensurate": int(np.sum(freqs < -0.05)),
    }
    entry.checks = checks
    return checks


def _finish(entry: HarmonicEntry) -> HarmonicEntry:
    if entry.functional is None:
        entry.functional = detect_functional(*[Path(f) for f in entry.files])
    check_entry(entry)
    return entry


#: phonopy loaders run in an empty working directory (see :func:`tdphonon.evaluation.isolated_cwd`)
_isolated_cwd = isolated_cwd


def _energy0_from_dataset(dataset: dict | None) -> float | None:
    """Energy of the perfect supercell if a phonopy dataset records it (rare)."""
    if not dataset:
        return None
    for key in ("supercell_energy", "perfect_supercell_energy", "energy_perfect_supercell"):
        if dataset.get(key) is not None:
            return float(dataset[key])
    return None


def _born_near(path: Path) -> str | None:
    folder = path if path.is_dir() else path.parent
    tag = None
    if path.is_file() and path.name.startswith("phonopy_disp_"):
        tag = path.name[len("phonopy_disp_"):].split(".yaml")[0]
    for name in ([f"BORN_{tag}"] if tag else []) + (["BORN"] if path.is_dir() else []):
        if (folder / name).is_file():
            return str(folder / name)
    return None


def check_force_sets_file(path: str | Path, natom: int, label: str | None = None) -> int:
    """Check the layout of a phonopy ``FORCE_SETS`` file against the supercell size; return the count.

    Type 1 (finite displacements): a header with the number of atoms and of displacements, then per
    displacement the atom index, the displacement and ``natom`` force lines. Type 2 (random
    displacements): ``ux uy uz fx fy fz`` per atom, ``natom`` lines per configuration, ``#``
    comments. phonopy's own reader fails on such errors with messages that do not say what is
    wrong (or, for a truncated file, with a ``RecursionError``).

    Raises
    ------
    DataError
        Atom count different from ``natom``, truncated or malformed blocks (message names the file).
    """
    p = Path(path)
    try:
        text = p.read_text(errors="replace")
    except OSError as exc:
        raise _error(label, p, "cannot be read", exc) from exc
    lines = [(i + 1, ln.split("#")[0].split()) for i, ln in enumerate(text.splitlines())]
    lines = [(i, t) for i, t in lines if t]
    if not lines:
        raise _error(label, p, "empty FORCE_SETS")
    if len(lines[0][1]) == 6:  # type 2
        bad = next(((i, t) for i, t in lines if len(t) != 6), None)
        if bad:
            raise _error(label, p, f"line {bad[0]}: expected 6 numbers (ux uy uz fx fy fz), got {len(bad[1])}")
        if len(lines) % natom:
            raise _error(label, p, f"{len(lines)} displacement/force lines are not a multiple of the {natom} atoms "
                         "of the supercell (wrong supercell or truncated file)")
        return len(lines) // natom
    try:
        declared = int(lines[0][1][0])
        ndisp = int(lines[1][1][0])
    except (ValueError, IndexError) as exc:
        raise _error(label, p, "no 'number of atoms' / 'number of displacements' header", exc) from exc
    if declared != natom:
        raise _error(label, p, f"declares {declared} atoms but the supercell has {natom}")
    pos = 2
    for k in range(ndisp):
        block = lines[pos: pos + 2 + natom]
        if len(block) < 2 + natom:
            raise _error(label, p, f"displacement {k + 1} of {ndisp}: only {max(len(block) - 2, 0)} of {natom} force "
                         "lines (truncated file?)")
        shape = [len(t) for _, t in block]
        if shape[0] != 1 or any(n != 3 for n in shape[1:]):
            j, (i, t) = next((j, b) for j, b in enumerate(block) if len(b[1]) != (1 if j == 0 else 3))
            what = "the displaced atom's index" if j == 0 else ("the displacement" if j == 1 else f"force line {j - 1}")
            raise _error(label, p, f"line {i}: displacement {k + 1} of {ndisp}: {len(t)} number(s) where {what} was "
                         f"expected (a block is the atom index, the displacement and {natom} force lines)")
        pos += 2 + natom
    if pos != len(lines):
        raise _error(label, p, f"{len(lines) - pos} lines after the {ndisp} displacements declared in the header")
    return ndisp


def _yaml_supercell_natoms(path: Path) -> int | None:
    try:
        from phonopy.interface.phonopy_yaml import PhonopyYaml

        ply = PhonopyYaml()
        ply.read(str(path))
        return len(ply.supercell) if ply.supercell is not None else None
    except Exception:
        return None


# --------------------------------------------------------------------------------------------
# phonopy / phono3py
# --------------------------------------------------------------------------------------------
def read_phonopy(path: str | Path, label: str | None = None, force_sets: str | Path | None = None,
                 functional: str | None = None) -> HarmonicEntry:
    """Read a phonopy data set: a ``phonopy_params*.yaml(.xz)`` / ``phonopy*.yaml`` file, a
    ``phonopy_disp_X.yaml`` with ``FORCE_SETS_X`` beside it, or a folder with ``phonopy_disp.yaml`` +
    ``FORCE_SETS`` (+ ``BORN``). ``force_sets`` names a force-sets file explicitly.

    Φ is produced as in :func:`tdphonon.evaluation.load_reference` (phonopy's solver for
    finite displacements, symfc for random ones). The DFT displacement–force data are kept in
    ``raw_displacement_sets``.

    Raises
    ------
    DataError
        Missing / unreadable / inconsistent files (the message names the file).
    """
    import phonopy

    from tdphonon.evaluation import load_reference

    p = Path(path).absolute()
    force_sets = Path(force_sets).absolute() if force_sets is not None else None
    label = label or (p.name if p.is_dir() else p.name.split(".yaml")[0])
    if not p.exists():
        raise _error(label, p, "no such file or folder")
    files: list[str] = []
    if p.is_dir():
        disp, fs = p / "phonopy_disp.yaml", Path(force_sets) if force_sets else p / "FORCE_SETS"
        for f in (disp, fs):
            if not f.is_file():
                raise _error(label, f, "missing (a phonopy folder needs phonopy_disp.yaml + FORCE_SETS)")
        files = [str(disp), str(fs)]
        main = fs
    else:
        files = [str(p)]
        main = p
        if p.name.startswith("phonopy_disp_") and force_sets is None:
            tagged = p.parent / f"FORCE_SETS_{p.name[13:].split('.yaml')[0]}"
            if tagged.is_file():
                files.append(str(tagged))
                main = tagged
        if force_sets is not None:
            files.append(str(force_sets))
            main = Path(force_sets)
    born = _born_near(p)
    if born:
        files.append(born)
    if main.name.startswith("FORCE_SETS"):
        natom = _yaml_supercell_natoms(Path(files[0]))
        if natom is None:
            raise _error(label, files[0], "cannot be read as a phonopy yaml (no supercell)")
        check_force_sets_file(main, natom, label)
    try:
        with _isolated_cwd():
            if force_sets is not None and p.is_file():
                ph = phonopy.load(str(p), force_sets_filename=str(force_sets), is_nac=False, log_level=0,
                                  produce_fc=True)
                if ph.force_constants is None:
                    raise ValueError("no force constants could be produced")
            else:
                ph = load_reference(p, name=label).phonon
    except DataError:
        raise
    except Exception as exc:
        raise _error(label, main, "cannot be read as a phonopy data set", exc) from exc
    ph.force_constants = full_force_constants(ph)
    raw = force_sets_from_dataset(ph.dataset, ph.supercell, str(main), label)
    how = "random displacements, symfc" if raw and raw[0].kind == "random" else "finite displacements"
    notes = [f"Φ from phonopy ({how})" if raw else "Φ read from file"]
    if born:
        notes.append("BORN present (NAC not used: Φ is the supercell force-constant set)")
    entry = HarmonicEntry(label, ph, str(p), files, functional, notes, raw, _energy0_from_dataset(ph.dataset), born)
    return _finish(entry)


def read_force_constants(fc_path: str | Path, structure: str | Path, label: str | None = None,
                         functional: str | None = None) -> HarmonicEntry:
    """``FORCE_CONSTANTS`` (text) or ``force_constants.hdf5`` with the structure of a phonopy yaml.

    ``structure`` is any phonopy yaml giving unit cell, supercell and primitive matrices
    (``phonopy_disp.yaml``, ``phonopy.yaml``, ``phonopy_params.yaml``); its force sets (if any) are
    ignored. The force constants must belong to that supercell (full or compact).
    """
    import phonopy
    from phonopy.file_IO import parse_FORCE_CONSTANTS, read_force_constants_hdf5

    fc_path, structure = Path(fc_path).absolute(), Path(structure).absolute()
    label = label or fc_path.parent.name
    for f in (fc_path, structure):
        if not f.is_file():
            raise _error(label, f, "missing")
    try:
        with _isolated_cwd():
            ph = phonopy.load(str(structure), is_nac=False, log_level=0, produce_fc=False)
    except Exception as exc:
        raise _error(label, structure, "cannot be read as a phonopy structure yaml", exc) from exc
    try:
        fc = (read_force_constants_hdf5(str(fc_path)) if fc_path.suffix in (".hdf5", ".h5")
              else parse_FORCE_CONSTANTS(str(fc_path)))
    except Exception as exc:
        raise _error(label, fc_path, "cannot be read as force constants", exc) from exc
    fc = np.asarray(fc, dtype=float)
    n, npr = len(ph.supercell), len(ph.primitive)
    if fc.ndim != 4 or fc.shape[1:] != (n, 3, 3) or fc.shape[0] not in (n, npr):
        raise _error(label, fc_path, f"force constants of shape {fc.shape} do not fit the {n}-atom supercell "
                     f"({npr}-atom primitive) of {structure.name}")
    ph.force_constants = fc
    ph.force_constants = full_force_constants(ph)
    entry = HarmonicEntry(label, ph, str(fc_path), [str(fc_path), str(structure)], functional,
                          [f"Φ read from {fc_path.name}"], [], None, _born_near(fc_path.parent))
    return _finish(entry)


def read_phono3py(path: str | Path, label: str | None = None, functional: str | None = None) -> HarmonicEntry:
    """fc2 of a phono3py yaml (via :func:`tdphonon.evaluation.load_reference`) with all its raw data.

    The phonon (fc2) displacement set and the fc3 displacement set are both kept as raw force sets
    (they may be on different supercells; each :class:`ForceSet` carries its own reference).
    Without a separate fc2 set, fc2 is computed from the fc3 supercell data by phono3py.
    """
    from tdphonon.evaluation import load_reference

    p = Path(path).absolute()
    label = label or p.name.split(".yaml")[0]
    if not p.is_file():
        raise _error(label, p, "no such file")
    try:
        import phono3py

        with _isolated_cwd():
            ph3 = phono3py.load(str(p), produce_fc=False, log_level=0, is_nac=False)
    except Exception as exc:
        raise _error(label, p, "cannot be read as a phono3py data set", exc) from exc
    try:
        with _isolated_cwd():
            ph = load_reference(p, name=label).phonon
    except Exception as exc:
        raise _error(label, p, "no fc2 could be produced from the phono3py data", exc) from exc
    ph.force_constants = full_force_constants(ph)
    raw: list[ForceSet] = []
    if ph3.phonon_dataset:
        raw += force_sets_from_dataset(ph3.phonon_dataset, ph3.phonon_supercell, str(p), label)
    raw += force_sets_from_dataset(ph3.dataset, ph3.supercell, str(p), label)
    notes = ["Φ = phono3py fc2 from the " + ("fc2 (phonon) set" if ph3.phonon_dataset else "fc3 supercell set")]
    if ph3.nac_params is not None:
        notes.append("Born charges present (NAC not used)")
    entry = HarmonicEntry(label, ph, str(p), [str(p)], functional, notes, raw, None, None)
    return _finish(entry)


def read_spacegroup_set(folder: str | Path, sg: str, label: str | None = None,
                        functional: str | None = None) -> HarmonicEntry:
    """``FORCE_SETS_<SG>`` + ``POSCAR_<SG>`` of phonopy's space-group collection (``DIMS.txt``)."""
    from tdphonon.evaluation import load_spacegroup_set

    folder = Path(folder).absolute()
    files = [str(folder / f"FORCE_SETS_{sg}"), str(folder / f"POSCAR_{sg}"), str(folder / "DIMS.txt")]
    try:
        with _isolated_cwd():
            ref = load_spacegroup_set(folder, sg)
    except Exception as exc:
        raise _error(label or sg, files[0], "cannot be read with POSCAR/DIMS.txt", exc) from exc
    ph = ref.phonon
    ph.force_constants = full_force_constants(ph)
    raw = force_sets_from_dataset(ph.dataset, ph.supercell, files[0], label or ref.name)
    entry = HarmonicEntry(label or ref.name, ph, files[0], files, functional, ["Φ from phonopy (finite displacements)"],
                          raw, None, None)
    return _finish(entry)


def _parse_phonopy_conf(path: Path) -> dict[str, str]:
    tags: dict[str, str] = {}
    for line in path.read_text(errors="replace").splitlines():
        line = line.split("#")[0].strip()
        if "=" in line:
            k, v = line.split("=", 1)
            tags[k.strip().upper()] = v.strip()
    return tags


def _numbers(text: str) -> list[float]:
    out = []
    for tok in text.replace(",", " ").split():
        if "/" in tok:
            a, b = tok.split("/")
            out.append(float(a) / float(b))
        else:
            out.append(float(tok))
    return out


def read_phonopy_conf_folder(folder: str | Path, label: str | None = None,
                             functional: str | None = None) -> HarmonicEntry:
    """Older MDR layout: ``POSCAR-unitcell`` + ``FORCE_SETS`` (+ ``BORN``) + ``phonopy.conf`` / ``disp.conf``.

    The supercell matrix is ``DIM`` (3 or 9 numbers) and the primitive matrix ``PRIMITIVE_AXES``
    (or ``PRIMITIVE_AXIS`` / ``PA``; ``auto`` accepted) of the conf file.
    """
    import phonopy

    folder = Path(folder).absolute()
    label = label or folder.name
    conf = next((folder / n for n in ("phonopy.conf", "disp.conf", "band.conf", "mesh.conf")
                 if (folder / n).is_file()), None)
    poscar, fs = folder / "POSCAR-unitcell", folder / "FORCE_SETS"
    for f in (poscar, fs):
        if not f.is_file():
            raise _error(label, f, "missing")
    if conf is None:
        raise _error(label, folder, "no phonopy.conf / disp.conf giving the supercell matrix (DIM)")
    tags = _parse_phonopy_conf(conf)
    try:
        dim = [round(x) for x in _numbers(tags["DIM"])]
        smat = np.diag(dim) if len(dim) == 3 else np.reshape(dim, (3, 3))
        pa = next((tags[k] for k in ("PRIMITIVE_AXES", "PRIMITIVE_AXIS", "PA") if k in tags), "auto")
        pmat: Any = pa.strip().lower() if pa.strip().lower() in ("auto", "p", "f", "i", "a", "c", "r") else \
            np.reshape(_numbers(pa), (3, 3))
        if isinstance(pmat, str):
            pmat = "auto" if pmat == "auto" else pmat.upper()
    except Exception as exc:
        raise _error(label, conf, "DIM / PRIMITIVE_AXES cannot be parsed", exc) from exc
    born = str(folder / "BORN") if (folder / "BORN").is_file() else None
    try:
        from phonopy.interface.calculator import read_crystal_structure

        unit, _ = read_crystal_structure(str(poscar), interface_mode="vasp")
    except Exception as exc:
        raise _error(label, poscar, "cannot be read as a VASP POSCAR", exc) from exc
    check_force_sets_file(fs, len(unit) * round(abs(np.linalg.det(smat))), label)
    try:
        with _isolated_cwd():
            ph = phonopy.load(supercell_matrix=smat, primitive_matrix=pmat, unitcell_filename=str(poscar),
                              force_sets_filename=str(fs), is_nac=False, log_level=0, produce_fc=True)
    except Exception as exc:
        raise _error(label, fs, "cannot be read with POSCAR-unitcell and " + conf.name, exc) from exc
    ph.force_constants = full_force_constants(ph)
    raw = force_sets_from_dataset(ph.dataset, ph.supercell, str(fs), label)
    files = [str(poscar), str(fs), str(conf)] + ([born] if born else [])
    entry = HarmonicEntry(label, ph, str(folder), files, functional, ["Φ from phonopy (FORCE_SETS)"], raw, None, born)
    return _finish(entry)


# --------------------------------------------------------------------------------------------
# ALAMODE
# --------------------------------------------------------------------------------------------
@dataclass
class AlamodeInput:
    """Structure and settings of an ALAMODE ``*.in`` file (converted to Å).

    Attributes
    ----------
    path
        The file.
    symbols
        Element of each atom (from ``KD`` and the kind index of ``&position``).
    cell
        (3, 3) lattice vectors (rows) in Å (``&cell`` scale × vectors, Bohr → Å).
    scaled_positions
        (NAT, 3) fractional coordinates.
    masses
        (NAT,) amu from ``MASS`` when given, else ``None`` (standard masses).
    blocks
        Every ``&block`` as a dict of upper-case keys → raw string values (``&cell`` and
        ``&position`` as lists of lines under the key ``"lines"``).
    """

    path: str
    symbols: list[str]
    cell: np.ndarray
    scaled_positions: np.ndarray
    masses: np.ndarray | None
    blocks: dict[str, dict[str, Any]]

    @property
    def natom(self) -> int:
        return len(self.symbols)

    @property
    def norder(self) -> int | None:
        v = self.blocks.get("interaction", {}).get("NORDER")
        return int(v.split()[0]) if v else None

    @property
    def dfset(self) -> str | None:
        return self.blocks.get("optimize", {}).get("DFSET") or self.blocks.get("fitting", {}).get("DFSET")

    @property
    def ndata(self) -> int | None:
        v = self.blocks.get("optimize", {}).get("NDATA") or self.blocks.get("fitting", {}).get("NDATA")
        return int(v.split()[0]) if v else None

    def atoms(self) -> Atoms:
        a = Atoms(symbols=self.symbols, cell=self.cell, scaled_positions=self.scaled_positions, pbc=True)
        if self.masses is not None:
            a.set_masses(self.masses)
        return a


def _split_blocks(text: str, path: Path, label: str | None) -> dict[str, list[str]]:
    blocks: dict[str, list[str]] = {}
    current: str | None = None
    for ln, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#")[0].strip()
        if not line:
            continue
        if current is None:
            if line.startswith("&"):
                current = line[1:].split()[0].lower()
                if current in blocks:
                    raise _error(label, path, f"line {ln}: block &{current} appears twice")
                blocks[current] = []
                rest = line[1 + len(current):].strip()
                if rest:
                    blocks[current].append(rest)
            else:
                raise _error(label, path, f"line {ln}: text outside a &block: {raw.strip()!r}")
        elif line == "/":
            current = None
        else:
            blocks[current].append(line)
    if current is not None:
        raise _error(label, path, f"block &{current} is not closed by '/'")
    return blocks


def read_alamode_input(path: str | Path, label: str | None = None) -> AlamodeInput:
    """Parse an ALAMODE input (``&general``, ``&cell`` in Bohr, ``&position`` fractional).

    Raises
    ------
    DataError
        Missing blocks / tags, NAT or NKD inconsistent with the positions and kinds.
    """
    p = Path(path)
    try:
        text = p.read_text(errors="replace")
    except OSError as exc:
        raise _error(label, p, "cannot be read", exc) from exc
    raw = _split_blocks(text, p, label)
    blocks: dict[str, dict[str, Any]] = {}
    for name, lines in raw.items():
        if name in ("cell", "position", "kpoint", "cutoff", "analysis"):
            blocks[name] = {"lines": lines}
            continue
        tags: dict[str, str] = {}
        for line in lines:
            for part in line.split(";"):
                if "=" in part:
                    k, v = part.split("=", 1)
                    tags[k.strip().upper()] = v.strip()
        blocks[name] = tags
    for need in ("general", "cell", "position"):
        if need not in blocks:
            raise _error(label, p, f"no &{need} block")
    gen = blocks["general"]
    try:
        nat = int(gen["NAT"])
        nkd = int(gen["NKD"])
        kd = gen["KD"].split()
    except (KeyError, ValueError) as exc:
        raise _error(label, p, "&general needs NAT, NKD and KD", exc) from exc
    if len(kd) != nkd:
        raise _error(label, p, f"KD lists {len(kd)} elements but NKD = {nkd}")
    try:
        cl = [[float(x) for x in line.split()] for line in blocks["cell"]["lines"]]
        if len(cl) == 4 and len(cl[0]) == 1 and all(len(r) == 3 for r in cl[1:]):
            cell = cl[0][0] * np.array(cl[1:]) * BOHR
        else:
            raise ValueError(f"expected a scale factor line and 3 lattice vectors, got {len(cl)} lines")
    except ValueError as exc:
        raise _error(label, p, "&cell cannot be parsed", exc) from exc
    if abs(np.linalg.det(cell)) < 1e-6:
        raise _error(label, p, "&cell lattice vectors are singular")
    symbols, frac = [], []
    for line in blocks["position"]["lines"]:
        parts = line.split()
        try:
            ikd = int(parts[0])
            xyz = [float(x) for x in parts[1:4]]
        except (ValueError, IndexError) as exc:
            raise _error(label, p, f"&position line {line!r} is not 'kind x y z'", exc) from exc
        if len(xyz) != 3 or not 1 <= ikd <= nkd:
            raise _error(label, p, f"&position line {line!r}: kind must be 1..{nkd}, then 3 coordinates")
        symbols.append(kd[ikd - 1])
        frac.append(xyz)
    if len(symbols) != nat:
        raise _error(label, p, f"&position has {len(symbols)} atoms but NAT = {nat}")
    masses = None
    if "MASS" in gen:
        mk = [float(x) for x in gen["MASS"].split()]
        if len(mk) != nkd:
            raise _error(label, p, f"MASS lists {len(mk)} values but NKD = {nkd}")
        masses = np.array([mk[kd.index(s)] for s in symbols])
    return AlamodeInput(str(p), symbols, cell, np.array(frac, dtype=float), masses, blocks)


_EPOT = re.compile(r"E_pot\s*\(eV\)\s*:\s*([-+0-9.eEdD]+)")


def read_dfset(path: str | Path, natom: int, label: str | None = None,
               ndata: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Read an ALAMODE ``DFSET`` (Bohr, Ry/Bohr) → displacements (Å), forces (eV/Å), energies (eV).

    Parameters
    ----------
    path
        The file: ``ux uy uz fx fy fz`` per atom, NAT lines per configuration, ``#`` comments (a
        comment with ``E_pot (eV): value`` before a block gives its energy).
    natom
        NAT of the supercell.
    ndata
        If given, the file must hold at least this many configurations (only these are read).

    Returns
    -------
    displacements, forces, energies
        (n, N, 3) Å, (n, N, 3) eV/Å, and (n,) eV or ``None`` when not every block has ``E_pot``.

    Raises
    ------
    DataError
        Lines that are not 6 numbers, a block with a line count other than NAT (truncated file),
        fewer configurations than ``ndata``, non-finite values.
    """
    p = Path(path)
    try:
        lines = p.read_text(errors="replace").splitlines()
    except OSError as exc:
        raise _error(label, p, "cannot be read", exc) from exc
    rows: list[list[float]] = []
    comments: list[tuple[int, int, str]] = []  # (row index, line number, text)
    for ln, raw in enumerate(lines, 1):
        s = raw.strip()
        if not s:
            continue
        if s.startswith("#"):
            comments.append((len(rows), ln, s))
            continue
        parts = s.split()
        if len(parts) != 6:
            raise _error(label, p, f"line {ln}: expected 6 numbers (ux uy uz fx fy fz), got {len(parts)}")
        try:
            rows.append([float(x.replace("D", "E").replace("d", "e")) for x in parts])
        except ValueError as exc:
            raise _error(label, p, f"line {ln}: not numbers: {s!r}", exc) from exc
    if not rows:
        raise _error(label, p, "no displacement–force lines")
    # comment lines must separate complete blocks
    for r, ln, _ in comments:
        if r % natom:
            raise _error(label, p, f"line {ln}: configuration {r // natom + 1} ends after {r % natom} atoms, "
                         f"NAT = {natom} (truncated block?)")
    if len(rows) % natom:
        raise _error(label, p, f"{len(rows)} data lines are not a multiple of NAT = {natom}: the last configuration "
                     f"has {len(rows) % natom} atoms (truncated file?)")
    n = len(rows) // natom
    if ndata is not None:
        if n < ndata:
            raise _error(label, p, f"{n} configurations, fewer than NDATA = {ndata}")
        n = ndata
    arr = np.asarray(rows[: n * natom], dtype=float).reshape(n, natom, 6)
    if not np.all(np.isfinite(arr)):
        raise _error(label, p, "NaN/inf values")
    energies: list[float | None] = [None] * n
    for r, _, text in comments:
        m = _EPOT.search(text)
        if m and r // natom < n:
            energies[r // natom] = float(m.group(1).replace("D", "E").replace("d", "e"))
    e = None if any(v is None for v in energies) else np.asarray(energies, dtype=float)
    return arr[..., :3] * BOHR, arr[..., 3:] * RY_PER_BOHR, e


def write_dfset(path: str | Path, displacements: np.ndarray, forces: np.ndarray,
                energies: np.ndarray | None = None) -> Path:
    """Write displacements (Å) and forces (eV/Å) as an ALAMODE ``DFSET`` (Bohr, Ry/Bohr).

    Each configuration is preceded by a ``#`` comment (with ``E_pot (eV): value`` when energies
    are given, eV as ALAMODE's ``extract.py`` writes them).
    """
    u = np.asarray(displacements, dtype=float) / BOHR
    f = np.asarray(forces, dtype=float) / RY_PER_BOHR
    if u.ndim == 2:
        u, f = u[None], f[None]
    if u.shape != f.shape:
        raise ValueError(f"displacements {u.shape} and forces {f.shape} differ in shape")
    out = []
    for k in range(len(u)):
        head = f"# Configuration {k + 1}"
        if energies is not None:
            head += f", E_pot (eV): {float(energies[k]):.10f}"
        out.append(head)
        for a in range(u.shape[1]):
            out.append(" ".join(f"{x:20.12f}" for x in u[k, a]) + "  " + " ".join(f"{x:20.12E}" for x in f[k, a]))
    p = Path(path)
    p.write_text("\n".join(out) + "\n")
    return p


def read_alamode_xml(path: str | Path, label: str | None = None) -> tuple[Atoms, np.ndarray | None]:
    """Structure (Å) and harmonic force constants (eV/Å², (N, N, 3, 3)) of an ALAMODE ``*.xml``.

    The ``HARMONIC`` list holds Φ(i α; j β) for the atoms i of the first primitive cell (``pair1``:
    primitive index, Cartesian index) and every supercell atom j (``pair2``: atom, index, image),
    split over periodic images; the images are summed and the other rows obtained with the
    ``Translations`` map. Returns ``None`` for Φ when the file has no harmonic IFCs.
    """
    import xml.etree.ElementTree as ET

    p = Path(path)
    try:
        root = ET.parse(p).getroot()
        st = root.find("Structure")
        nat = int(st.findtext("NumberOfAtoms"))
        lat = np.array([[float(x) for x in st.find("LatticeVector").findtext(a).split()] for a in ("a1", "a2", "a3")])
        pos = sorted(st.find("Position").findall("pos"), key=lambda e: int(e.get("index")))
        symbols = [e.get("element") for e in pos]
        frac = np.array([[float(x) for x in e.text.split()] for e in pos])
    except Exception as exc:
        raise _error(label, p, "cannot be read as an ALAMODE xml (Structure)", exc) from exc
    if len(symbols) != nat:
        raise _error(label, p, f"{len(symbols)} positions but NumberOfAtoms = {nat}")
    atoms = Atoms(symbols=symbols, cell=lat * BOHR, scaled_positions=frac, pbc=True)
    harm = root.find("ForceConstants/HARMONIC")
    if harm is None:
        return atoms, None
    try:
        trans: dict[tuple[int, int], int] = {}
        for m in root.find("Symmetry/Translations").findall("map"):
            trans[(int(m.get("tran")), int(m.get("atom")))] = int(m.text) - 1
        ntran = max(t for t, _ in trans)
        nprim = max(a for _, a in trans)
        fc = np.zeros((nat, nat, 3, 3))
        for e in harm.findall("FC2"):
            ip, a = (int(x) for x in e.get("pair1").split())
            j, b, _cell = (int(x) for x in e.get("pair2").split())
            fc[trans[(1, ip)], j - 1, a - 1, b - 1] += float(e.text)
    except Exception as exc:
        raise _error(label, p, "HARMONIC force constants cannot be read", exc) from exc
    # rows of the other primitive cells by lattice translation
    first = [trans[(1, k)] for k in range(1, nprim + 1)]
    for t in range(2, ntran + 1):
        shift = frac[trans[(t, 1)]] - frac[trans[(1, 1)]]
        target = (frac + shift) % 1.0
        d = target[:, None, :] - frac[None, :, :]
        d -= np.round(d)
        perm = np.argmin(np.linalg.norm(d @ lat, axis=-1), axis=1)
        if len(set(perm.tolist())) != nat:
            raise _error(label, p, f"translation {t} does not map the atoms onto each other")
        for i in first:
            fc[perm[i], perm] = fc[i]
    return atoms, fc * RY_PER_BOHR2


def _phonopy_from_supercell(atoms: Atoms) -> Phonopy:
    """Phonopy object whose unit cell is the given supercell (identity supercell matrix, primitive found)."""
    from phonopy.structure.atoms import PhonopyAtoms

    uc = PhonopyAtoms(symbols=atoms.get_chemical_symbols(), cell=np.asarray(atoms.cell),
                      scaled_positions=atoms.get_scaled_positions(wrap=False), masses=atoms.get_masses())
    with warnings.catch_warnings():  # phonopy's note on the 'auto' primitive-matrix default
        warnings.simplefilter("ignore")
        ph = Phonopy(uc, supercell_matrix=np.eye(3, dtype=int), primitive_matrix="auto", log_level=0)
    if not np.allclose(np.asarray(ph.supercell.scaled_positions), np.asarray(uc.scaled_positions) % 1.0, atol=1e-8):
        # phonopy kept the order for an identity supercell in every version tested; guard anyway
        raise ValueError("phonopy reordered the atoms of the ALAMODE supercell")
    return ph


def _same_structure(a: Atoms, b: Atoms) -> bool:
    if len(a) != len(b) or a.get_chemical_symbols() != b.get_chemical_symbols():
        return False
    d = a.get_scaled_positions() - b.get_scaled_positions()
    d -= np.round(d)
    return bool(np.allclose(a.cell.array, b.cell.array, atol=1e-5) and np.abs(d).max() < 1e-5)


def read_alamode(path: str | Path, label: str | None = None, harmonic_dfset: str | Path | None = None,
                 extra_dfsets: Iterable[str | Path] = (), xml: str | Path | None = None,
                 functional: str | None = None) -> HarmonicEntry:
    """An ALAMODE data set: structure from ``*.in`` (or ``*.xml``), Φ from the harmonic DFSET.

    Parameters
    ----------
    path
        An ALAMODE input file or a folder. For a folder every ``*.in`` file is read (their
        structures must agree), the DFSET named by each input (``&optimize DFSET``) and every
        ``DFSET*`` file are used, and an ``*.xml`` with harmonic IFCs is used when no harmonic DFSET
        exists (otherwise it is compared with the fitted Φ, recorded in ``notes``/``checks``).
    harmonic_dfset
        The finite-displacement set Φ is fitted to (default: the DFSET of an input with
        ``NORDER = 1``, else a ``DFSET*harmonic*`` file).
    extra_dfsets
        Further DFSETs kept as raw force sets (large-amplitude / MD data).
    xml
        ALAMODE xml with the structure and harmonic IFCs.

    Notes
    -----
    Φ is the symfc least-squares fit (space group, permutation and acoustic sum rule imposed;
    :meth:`tdphonon.sampling.FCProjector.fit`) of the harmonic set on a phonopy object whose unit
    cell is the ALAMODE supercell, so the supercell atom order is ALAMODE's.
    """
    from tdphonon.sampling import FCProjector

    p = Path(path)
    folder = p if p.is_dir() else p.parent
    label = label or (p.name if p.is_dir() else p.stem)
    if not p.exists():
        raise _error(label, p, "no such file or folder")
    inputs = [read_alamode_input(f, label) for f in (sorted(p.glob("*.in")) if p.is_dir() else [p])]
    xml_path = Path(xml) if xml else (next(iter(sorted(folder.glob("*.xml"))), None) if p.is_dir() else None)
    xml_atoms, xml_fc = read_alamode_xml(xml_path, label) if xml_path else (None, None)
    if inputs:
        ref = inputs[0].atoms()
        for inp in inputs[1:]:
            if not _same_structure(ref, inp.atoms()):
                raise _error(label, inp.path, f"structure differs from {Path(inputs[0].path).name}")
    elif xml_atoms is not None:
        ref = xml_atoms
    else:
        raise _error(label, p, "no ALAMODE structure (*.in with &cell/&position, or *.xml)")
    if xml_atoms is not None and not _same_structure(ref, xml_atoms):
        raise _error(label, xml_path, "structure differs from the ALAMODE input")
    natom = len(ref)
    # which DFSET is harmonic, which are extra
    harmonic = Path(harmonic_dfset) if harmonic_dfset else None
    ndata: dict[Path, int | None] = {}
    named: list[Path] = []
    for inp in inputs:
        if inp.dfset:
            f = (Path(inp.path).parent / inp.dfset)
            named.append(f)
            ndata[f] = inp.ndata
            if harmonic is None and inp.norder == 1:
                harmonic = f
    others = [Path(x) for x in extra_dfsets]
    if p.is_dir():
        others += [f for f in sorted(folder.glob("DFSET*")) if f.is_file()]
    others += named
    if harmonic is None:
        harmonic = next((f for f in others if "harmonic" in f.name.lower()), None)
    seen: set[Path] = set()
    dfsets: list[Path] = []
    for f in ([harmonic] if harmonic else []) + others:
        if f.resolve() not in seen:
            seen.add(f.resolve())
            dfsets.append(f)
    for f in dfsets:
        if not f.is_file():
            raise _error(label, f, "DFSET named by the ALAMODE input is missing")
    try:
        ph = _phonopy_from_supercell(ref)
    except Exception as exc:
        raise _error(label, p, "cannot build a phonopy object of the ALAMODE supercell", exc) from exc
    reference = supercell_to_ase(ph.supercell)
    raw: list[ForceSet] = []
    for f in dfsets:
        u, fo, e = read_dfset(f, natom, label, ndata.get(f))
        raw.append(ForceSet(u, fo, reference, e, _classify(u, str(f)), str(f)))
    notes: list[str] = []
    checks_extra: dict[str, Any] = {}
    if harmonic is not None:
        hset = raw[0]
        try:
            proj = FCProjector.from_phonopy(ph)
            fc = proj.fit(hset.displacements, hset.forces)
        except Exception as exc:
            raise _error(label, harmonic, "symfc fit of the harmonic DFSET failed", exc) from exc
        notes.append(f"Φ fitted with symfc to {harmonic.name} ({hset.n_configurations} configurations, "
                     "Bohr/Ry → Å/eV)")
        if xml_fc is not None:
            rel = float(np.linalg.norm(xml_fc - fc) / np.linalg.norm(fc))
            checks_extra["xml_relative_difference"] = rel
            notes.append(f"ALAMODE harmonic IFCs of {xml_path.name} differ by {rel:.2%} (Frobenius) from the fit")
    elif xml_fc is not None:
        fc = xml_fc
        notes.append(f"Φ = harmonic IFCs of {xml_path.name} (Ry/Bohr² → eV/Å²); no harmonic DFSET")
    else:
        raise _error(label, p, "no harmonic data: no DFSET of an NORDER = 1 input, no DFSET*harmonic*, "
                     "no ALAMODE xml with HARMONIC force constants")
    ph.force_constants = np.ascontiguousarray(fc)
    files = [inp.path for inp in inputs] + [str(f) for f in dfsets] + ([str(xml_path)] if xml_path else [])
    born = str(folder / "BORN") if (folder / "BORN").is_file() else None
    if born:
        files.append(born)
        notes.append("BORN present (NAC not used)")
    functional = functional or detect_functional(folder, *dfsets)
    entry = HarmonicEntry(label, ph, str(p), files, functional, notes, raw, None, born)
    _finish(entry)
    entry.checks.update(checks_extra)
    return entry


# --------------------------------------------------------------------------------------------
# dispatch, databases
# --------------------------------------------------------------------------------------------
_PARAMS_PRIORITY = ("phonopy_params.yaml.xz", "phonopy_params.yaml", "phono3py_params.yaml.xz", "phono3py_params.yaml",
                    "phonopy.yaml.xz", "phonopy.yaml")


def _is_alamode_input(f: Path) -> bool:
    try:
        head = f.read_text(errors="replace")[:4000].lower()
    except OSError:
        return False
    return "&general" in head


def read_entry(path: str | Path, label: str | None = None, functional: str | None = None) -> HarmonicEntry:
    """Read one entry, detecting the format from the file name / folder content.

    Folders are tried in this order: ALAMODE (``*.in`` with ``&general``, or ``DFSET*`` files);
    ``phonopy_params.yaml(.xz)`` / ``phono3py_params.yaml(.xz)`` / ``phonopy.yaml(.xz)`` (or a single
    ``*phonopy_params*`` / ``*phono3py_params*`` file); ``phonopy_disp.yaml`` + ``FORCE_SETS``;
    ``FORCE_CONSTANTS`` / ``force_constants.hdf5`` + a phonopy yaml; ``POSCAR-unitcell`` +
    ``FORCE_SETS`` + ``phonopy.conf``.

    Raises
    ------
    DataError
        Nothing recognised, or the recognised data are unreadable / inconsistent.
    """
    p = Path(path)
    if not p.exists():
        raise _error(label or p.name, p, "no such file or folder")
    if p.is_file():
        label = label or p.name.split(".yaml")[0]
        name = p.name
        if name.endswith(".in") and _is_alamode_input(p):
            return read_alamode(p, label, functional=functional)
        if name.startswith("DFSET") or name.endswith(".xml"):
            return read_alamode(p.parent, label, functional=functional)
        if name in ("FORCE_CONSTANTS", "force_constants.hdf5"):
            yaml = next((p.parent / n for n in ("phonopy_disp.yaml", "phonopy.yaml", "phonopy_params.yaml")
                         if (p.parent / n).is_file()), None)
            if yaml is None:
                raise _error(label, p, "no phonopy_disp.yaml / phonopy.yaml beside it for the structure")
            return read_force_constants(p, yaml, label, functional)
        if "phono3py" in name:
            return read_phono3py(p, label, functional)
        if name == "phonopy_disp.yaml" and (p.parent / "FORCE_SETS").is_file():
            return read_phonopy(p.parent, label, functional=functional)
        if ".yaml" in name:
            return read_phonopy(p, label, functional=functional)
        raise _error(label, p, "unrecognised file (expected a phonopy/phono3py yaml, FORCE_CONSTANTS, "
                     "an ALAMODE .in / DFSET / .xml)")
    label = label or p.name
    ins = [f for f in sorted(p.glob("*.in")) if _is_alamode_input(f)]
    if ins or list(p.glob("DFSET*")):
        return read_alamode(p, label, functional=functional)
    for n in _PARAMS_PRIORITY:
        if (p / n).is_file():
            return read_entry(p / n, label, functional)
    params = sorted({*p.glob("*phonopy_params*.yaml*"), *p.glob("*phono3py_params*.yaml*")})
    if len(params) == 1:
        return read_entry(params[0], label, functional)
    if len(params) > 1:
        raise _error(label, p, "several parameter files, cannot choose: " + ", ".join(f.name for f in params))
    if (p / "phonopy_disp.yaml").is_file() and (p / "FORCE_SETS").is_file():
        return read_phonopy(p, label, functional=functional)
    for n in ("FORCE_CONSTANTS", "force_constants.hdf5"):
        if (p / n).is_file():
            return read_entry(p / n, label, functional)
    if (p / "POSCAR-unitcell").is_file() and (p / "FORCE_SETS").is_file():
        return read_phonopy_conf_folder(p, label, functional)
    if (p / "FORCE_SETS").is_file():
        raise _error(label, p, "FORCE_SETS without phonopy_disp.yaml or POSCAR-unitcell + phonopy.conf "
                     "(supercell unknown)")
    raise _error(label, p, "no recognised phonon data (phonopy_params.yaml(.xz), phonopy_disp.yaml + FORCE_SETS, "
                 "FORCE_CONSTANTS, phono3py yaml, ALAMODE .in + DFSET)")


def iter_database(root: str | Path, labels: Iterable[str] | None = None) -> Iterator[HarmonicEntry | SkippedEntry]:
    """Entries of a database folder with one sub-folder per material (MDR phonon database layout).

    Each (non-hidden) sub-folder is one entry labelled by the folder name, read with
    :func:`read_entry`; sub-folders that fail yield a :class:`SkippedEntry` with the reason.
    Entries are loaded one at a time (a database of thousands of materials need not fit in memory).

    Parameters
    ----------
    root
        The database folder.
    labels
        Only these folder names (default: all, sorted).
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(None, f"{root}: database folder not found")
    wanted = set(labels) if labels is not None else None
    for sub in sorted(x for x in root.iterdir() if x.is_dir() and not x.name.startswith((".", "_"))):
        if wanted is not None and sub.name not in wanted:
            continue
        try:
            yield read_entry(sub, sub.name)
        except TDPhononError as exc:
            yield SkippedEntry(sub.name, str(sub), getattr(exc, "reason", str(exc)))
        except Exception as exc:  # any other failure of a third-party reader: report, never include
            yield SkippedEntry(sub.name, str(sub), f"{type(exc).__name__}: {exc}")


def read_database(root: str | Path, labels: Iterable[str] | None = None) -> DatabaseReport:
    """All entries of :func:`iter_database` (loaded) plus the skipped ones."""
    rep = DatabaseReport()
    for item in iter_database(root, labels):
        (rep.skipped if isinstance(item, SkippedEntry) else rep.entries).append(item)
    return rep


def iter_reference_entries(root: str | Path) -> Iterator[tuple[str, Path, Any]]:
    """``(label, path, loader)`` of every data set in a reference tree like ``../shared/reference``.

    Builds on :func:`tdphonon.evaluation.find_reference_sets` / ``iter_reference_sets`` (phonopy and
    phono3py sets, the space-group collection), adds ``*phono3py_params*`` files with a prefix,
    phonopy folders with ``FORCE_SETS`` but no ``phonopy_disp.yaml`` (reported as unreadable) and
    ALAMODE folders (``DFSET*``). ``loader()`` returns a :class:`HarmonicEntry` or raises
    :class:`DataError`; loading is deferred (the 512-atom phono3py sets take ~30 s each).
    """
    from tdphonon.evaluation import find_reference_sets

    root = Path(root)
    seen: set[Path] = set()
    paths = set(find_reference_sets(root)) | set(root.rglob("*phono3py_params*.yaml*"))
    for p in sorted(paths):
        if p in seen:
            continue
        seen.add(p)
        rel = p.relative_to(root).as_posix()
        label = p.name.split(".yaml")[0]
        func = REFERENCE_FUNCTIONALS.get(rel)
        if p.is_dir():
            yield label, p, (lambda p=p, label=label, func=func: read_phonopy(p, label, functional=func))
        elif "phono3py" in p.name:
            yield label, p, (lambda p=p, label=label, func=func: read_phono3py(p, label, func))
        else:
            yield label, p, (lambda p=p, label=label, func=func: read_phonopy(p, label, functional=func))
    for dims in sorted(root.rglob("DIMS.txt")):
        for fs in sorted(dims.parent.glob("FORCE_SETS_*")):
            sg = fs.name.removeprefix("FORCE_SETS_")
            if (dims.parent / f"POSCAR_{sg}").exists():
                yield (f"spacegroup-{sg}", fs,
                       lambda d=dims.parent, sg=sg: read_spacegroup_set(d, sg, f"spacegroup-{sg}"))
    for fs in sorted(root.rglob("FORCE_SETS")):
        folder = fs.parent
        if folder in seen or (folder / "phonopy_disp.yaml").exists():
            continue
        yield folder.name, folder, (lambda folder=folder: read_entry(folder, folder.name))
    for folder in sorted({f.parent for f in root.rglob("DFSET*")}):
        rel = folder.relative_to(root).as_posix()
        label = f"alamode-{folder.name}" if "alamode" in rel.lower() else folder.name
        func = REFERENCE_FUNCTIONALS.get(rel)
        yield label, folder, (lambda folder=folder, label=label, func=func:
                              read_alamode(folder, label, functional=func))


def read_reference_collection(root: str | Path, labels: Iterable[str] | None = None,
                              skip_larger_than: int | None = None) -> DatabaseReport:
    """Read every set of :func:`iter_reference_entries` (optionally only ``labels``).

    ``skip_larger_than`` leaves out (reported as skipped) supercells with more atoms than this
    after loading — the entries are still read; use ``labels`` to avoid slow loads.
    """
    rep = DatabaseReport()
    wanted = set(labels) if labels is not None else None
    for label, path, loader in iter_reference_entries(root):
        if wanted is not None and label not in wanted:
            continue
        try:
            entry = loader()
        except TDPhononError as exc:
            rep.skipped.append(SkippedEntry(label, str(path), getattr(exc, "reason", str(exc))))
            continue
        except Exception as exc:
            rep.skipped.append(SkippedEntry(label, str(path), f"{type(exc).__name__}: {exc}"))
            continue
        if skip_larger_than is not None and entry.n_atoms_supercell > skip_larger_than:
            rep.skipped.append(SkippedEntry(label, str(path), f"{entry.n_atoms_supercell} atoms > {skip_larger_than}"))
            continue
        rep.entries.append(entry)
    return rep


def estimate_energy0(entry: HarmonicEntry, max_rms_mev_per_atom: float = 1.0) -> tuple[float, float, int] | None:
    """Energy of the undisplaced supercell from raw DFT energies: E₀ ≈ median_k(E_k − ½ u_kᵀΦu_k).

    Uses the raw sets with energies on the supercell of Φ. Returns ``(E0, rms, n)``, energies in eV (rms of
    the per-configuration estimates, a measure of anharmonicity and noise) and the number of DFT
    configurations used, or ``None`` when no
    energies are available or the rms exceeds ``max_rms_mev_per_atom`` meV/atom (the harmonic
    energy model then does not describe the DFT energies).
    """
    fc = entry.force_constants
    n = entry.n_atoms_supercell
    est = []
    for s in entry.raw_displacement_sets:
        if s.energies is None or s.n_atoms != n or not _same_structure(s.reference, entry.reference_atoms()):
            continue
        eh = 0.5 * np.einsum("kia,ijab,kjb->k", s.displacements, fc, s.displacements)
        est.extend((s.energies - eh).tolist())
    if not est:
        return None
    est_arr = np.asarray(est)
    e0 = float(np.median(est_arr))
    rms = float(np.sqrt(np.mean((est_arr - e0) ** 2)))
    if rms > max_rms_mev_per_atom * 1e-3 * n:
        return None
    return e0, rms, len(est_arr)

