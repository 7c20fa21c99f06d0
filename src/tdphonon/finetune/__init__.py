"""Fine-tuning data from harmonic DFT phonon databases (force–displacement data sets).

:mod:`tdphonon.finetune.sources` reads DFT harmonic force-constant sets (phonopy, phono3py,
``FORCE_CONSTANTS``, ALAMODE, MDR-style database folders) into :class:`HarmonicEntry` objects;
:mod:`tdphonon.finetune.dataset` turns them into extxyz training / validation / test files with a
manifest (split by compound), following the recipe of Lee & Xia (2024): ten configurations per
compound with random displacements of 0.01–0.05 Å and forces F = −Φu from the DFT force constants.

Units: Å, eV, eV/Å, eV/Å², amu, THz.
"""

from tdphonon.finetune.dataset import (
    DatasetSettings,
    FinetuneDataset,
    build_dataset,
    compound_configurations,
    harmonic_energies,
    harmonic_forces,
    load_dataset,
    mode_weighted_displacements,
    random_displacements,
    split_by_compound,
    thermal_displacements,
    write_dataset,
)
from tdphonon.finetune.sources import (
    DatabaseReport,
    DataError,
    ForceSet,
    HarmonicEntry,
    SkippedEntry,
    estimate_energy0,
    iter_database,
    iter_reference_entries,
    read_alamode,
    read_alamode_input,
    read_alamode_xml,
    read_database,
    read_dfset,
    read_entry,
    read_force_constants,
    read_phono3py,
    read_phonopy,
    read_reference_collection,
    write_dfset,
)

__all__ = [
    "DataError",
    "DatabaseReport",
    "DatasetSettings",
    "FinetuneDataset",
    "ForceSet",
    "HarmonicEntry",
    "SkippedEntry",
    "build_dataset",
    "compound_configurations",
    "estimate_energy0",
    "harmonic_energies",
    "harmonic_forces",
    "iter_database",
    "iter_reference_entries",
    "load_dataset",
    "mode_weighted_displacements",
    "random_displacements",
    "read_alamode",
    "read_alamode_input",
    "read_alamode_xml",
    "read_database",
    "read_dfset",
    "read_entry",
    "read_force_constants",
    "read_phono3py",
    "read_phonopy",
    "read_reference_collection",
    "split_by_compound",
    "thermal_displacements",
    "write_dataset",
    "write_dfset",
]
