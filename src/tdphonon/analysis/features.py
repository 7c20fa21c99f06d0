"""matminer descriptors for the random-forest models of anharmonicity (Lee, Li, He & Xia 2026).

Two feature sets are built, each from featurizers whose data ship inside matminer / pymatgen (no
featurizer that downloads anything is used — tdphonon never fetches feature data):

**Global (per material) — 144 columns**, for the model of ``R_full``
(:func:`global_featurizers`, :func:`global_features`):

* ``StructureComposition(ElementProperty.from_preset("magpie", impute_nan=False))`` — 132 columns,
  ``"MagpieData {stat} {property}"``: the 22 Magpie element properties × 6 stoichiometry-weighted
  statistics (minimum, maximum, range, mean, avg_dev, mode) of ``structure.composition``. The
  element tables are ``matminer/utils/data_files/magpie_elementdata/*.table``.
* ``DensityFeatures()`` — 3 columns: ``density`` (g/cm³), ``vpa`` (Å³/atom), ``packing fraction``
  (pymatgen atomic radii, shipped in pymatgen's periodic table).
* ``StructuralHeterogeneity()`` — 9 columns: variation of the (Voronoi face-area weighted)
  neighbour distances across and within sites and of the Voronoi cell volumes — the
  "neighbour-distance variation" descriptors of Ward et al., PRB 96, 024104 (2017).

**Site (per atom) — 69 columns**, for the model of ``R_onsite``
(:func:`site_featurizers`, :func:`site_features`):

* ``SiteElementalProperty`` (Magpie data, the same 22 properties as above) — 22 columns,
  ``"site {property}"``.
* ``LocalPropertyDifference.from_preset("ward-prb-2017", impute_nan=False)`` — 22 columns,
  ``"local difference in {property}"``: Voronoi face-area weighted mean of |p(neighbour) − p(site)|.
* ``CoordinationNumber(CrystalNN())`` — 1 column, ``CN_CrystalNN`` (integer neighbour count).
* ``AverageBondLength(CrystalNN())`` — 1 column, ``Average bond length`` (Å, CrystalNN-weighted).
* ``AverageBondAngle(CrystalNN())`` — 1 column, ``Average bond angle`` (radians).
* ``VoronoiFingerprint(stats_vol=(), stats_area=(), stats_dist=(mean, std_dev, minimum, maximum))``
  — 22 columns: Voronoi indices (8) and i-fold symmetry indices (8), ``Voro_vol_sum`` (the local
  Voronoi volume, Å³), ``Voro_area_sum`` and the 4 statistics of the Voronoi neighbour distances.
  The per-facet volume / area statistics are left out: they add 8 columns strongly correlated with
  ``Voro_vol_sum`` / ``Voro_area_sum``.

CrystalNN is the neighbour method for the bonding features because it gives chemically sensible
first shells without oxidation states (rocksalt 6, perovskite B site 6, O 2 Ti, A site 12), whereas
VoronoiNN counts every Voronoi facet (O in SrTiO₃: 14). Its "No oxidation states specified"
warning is silenced on purpose: the structures are neutral by design.

Missing values
--------------
The frames keep NaN; nothing is filled here (the caller drops all-NaN columns and imputes with
the training median, so that imputation is fitted on training data only). NaN arises from

* ``impute_nan=False`` for the Magpie data: matminer's ``impute_nan=True`` would silently replace a
  missing element value by the periodic-table average of that property; instead the affected
  features are NaN. In Magpie's 22 properties only MeltingT (He, Fr), Electronegativity (He, Ne,
  Ar, Rn), SpaceGroupNumber (At, Rn, Fr) and elements beyond Pu lack data, so this matters for
  noble-gas / very heavy compounds only;
* ``Average bond angle`` for a site with a single CrystalNN neighbour (no angle defined);
* ``Average bond length`` / ``Average bond angle`` for a site where CrystalNN finds no neighbour
  at all (matminer's "Input structure has no bonds", e.g. Tl in CsCl-type TlCl).

±inf never reaches the frames (it is turned into NaN). A featurizer that *fails* (e.g. a site
with no neighbours at all) raises :class:`~tdphonon.errors.StructureError` naming the material,
the featurizer and the site; a missing shipped data table raises :class:`FeatureDataError`.

Warnings
--------
Only known, expected warnings are silenced, and only around the ``featurize`` calls: CrystalNN's
"No oxidation states specified" and "cannot locate an appropriate radius" (neutral structures by
design; CrystalNN then uses electronegativities and covalent / atomic radii) and numpy's "All-NaN
slice" (the NaN bond angle above). ``impute_nan`` (:data:`IMPUTE_NAN`) is passed explicitly to
every Magpie-backed featurizer rather than left to matminer's default (True), and ElementProperty
builds its own ``MagpieData`` from the preset, so its warning about an external data source with
``impute_nan=True`` cannot arise.

Performance
-----------
Featurizers run serially (``set_n_jobs(1)`` and direct ``featurize`` calls — no process pools).
matminer caches one structure-wide Voronoi neighbour list at a time, so :func:`site_features`
runs every requested site through one featurizer before the next (one tessellation per
featurizer, not per site), and empties that cache before each structure (the cache compares
structures regardless of site order and would otherwise hand a reordered copy the neighbours of
the original). A 40-atom cell takes ~1 s for the global and ~2–3 s for all-site features on one
CPU core; the first call also pays ~3 s of matminer imports.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import operator
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pymatgen.core import Structure

from tdphonon.errors import FeatureDataError, StructureError

__all__ = [
    "IMPUTE_NAN",
    "MAGPIE_PROPERTIES",
    "MAGPIE_STATS",
    "VORONOI_DIST_STATS",
    "FeatureDataError",
    "check_feature_data",
    "feature_versions",
    "global_feature_labels",
    "global_features",
    "global_featurizers",
    "magpie_data_dir",
    "site_feature_labels",
    "site_features",
    "site_featurizers",
]

#: Magpie element properties (those of ``ElementProperty.from_preset("magpie")``), used for the
#: composition statistics, the site's own element and the neighbour differences.
MAGPIE_PROPERTIES: tuple[str, ...] = (
    "Number",
    "MendeleevNumber",
    "AtomicWeight",
    "MeltingT",
    "Column",
    "Row",
    "CovalentRadius",
    "Electronegativity",
    "NsValence",
    "NpValence",
    "NdValence",
    "NfValence",
    "NValence",
    "NsUnfilled",
    "NpUnfilled",
    "NdUnfilled",
    "NfUnfilled",
    "NUnfilled",
    "GSvolume_pa",
    "GSbandgap",
    "GSmagmom",
    "SpaceGroupNumber",
)

#: Statistics of the Magpie preset (stoichiometry-weighted).
MAGPIE_STATS: tuple[str, ...] = ("minimum", "maximum", "range", "mean", "avg_dev", "mode")

#: matminer's ``impute_nan`` for every Magpie-backed featurizer: False keeps missing element data
#: as NaN (see the module docstring) instead of the periodic-table average.
IMPUTE_NAN = False

#: Statistics of the Voronoi neighbour distances in the site features.
VORONOI_DIST_STATS: tuple[str, ...] = ("mean", "std_dev", "minimum", "maximum")

_FEATURES_SCHEMA = 1

#: Warnings silenced deliberately while featurizing (message regex, category).
_SILENCED_WARNINGS: tuple[tuple[str, type[Warning]], ...] = (
    # CrystalNN on neutral structures: it falls back to electronegativity-based weights, as intended.
    ("No oxidation states specified on sites", UserWarning),
    # CrystalNN on neutral structures (no ionic radii): it falls back to covalent / atomic radii.
    ("CrystalNN: cannot locate an appropriate radius", UserWarning),
    # AverageBondAngle on a site with one neighbour: the angle is undefined and comes out NaN.
    ("All-NaN slice encountered", RuntimeWarning),
)


# --------------------------------------------------------------------------------------------- data


def magpie_data_dir() -> Path:
    """Folder of the Magpie element-property tables shipped with matminer.

    Returns
    -------
    Path
        ``<site-packages>/matminer/utils/data_files/magpie_elementdata``.
    """
    from matminer.utils import data as mm_data

    return Path(mm_data.module_dir) / "data_files" / "magpie_elementdata"


def check_feature_data(data_dir: str | os.PathLike | None = None) -> Path:
    """Check that the Magpie tables the featurizers read are present and non-empty.

    matminer's ``MagpieData`` globs the table folder and would otherwise fail later with a bare
    ``KeyError`` (or, for a truncated table, silently give NaN).

    Parameters
    ----------
    data_dir
        Folder holding ``<property>.table`` files; default :func:`magpie_data_dir`.

    Returns
    -------
    Path
        The checked folder.

    Raises
    ------
    FeatureDataError
        If the folder or any of the :data:`MAGPIE_PROPERTIES` tables is missing or empty.
    """
    folder = Path(data_dir) if data_dir is not None else magpie_data_dir()
    hint = (
        "these tables ship with matminer and are never downloaded by tdphonon; reinstall matminer "
        "(e.g. `pip install --force-reinstall matminer`)"
    )
    if not folder.is_dir():
        raise FeatureDataError(None, f"Magpie element-property data folder not found: {folder} — {hint}")
    missing = [
        f"{p}.table"
        for p in MAGPIE_PROPERTIES
        if not (folder / f"{p}.table").is_file() or (folder / f"{p}.table").stat().st_size == 0
    ]
    if missing:
        raise FeatureDataError(
            None, f"Magpie element-property table(s) missing or empty in {folder}: {', '.join(missing)} — {hint}"
        )
    return folder


# -------------------------------------------------------------------------------------- featurizers


def _serial(featurizers: list) -> list:
    for f in featurizers:
        f.set_n_jobs(1)
        inner = getattr(f, "featurizer", None)  # StructureComposition wraps a composition featurizer
        if inner is not None:
            inner.set_n_jobs(1)
    return featurizers


def global_featurizers() -> list:
    """The matminer featurizers of the per-material (global) features, freshly built.

    All take a pymatgen ``Structure`` (the composition featurizer is wrapped in
    ``StructureComposition``); see the module docstring for the choice and the 144 columns.

    Returns
    -------
    list
        ``[StructureComposition(ElementProperty magpie), DensityFeatures, StructuralHeterogeneity]``,
        each with ``n_jobs = 1``.

    Raises
    ------
    FeatureDataError
        If matminer's shipped Magpie tables are missing.
    """
    from matminer.featurizers.composition import ElementProperty
    from matminer.featurizers.structure import DensityFeatures, StructuralHeterogeneity, StructureComposition

    check_feature_data()
    return _serial(
        [
            StructureComposition(ElementProperty.from_preset("magpie", impute_nan=IMPUTE_NAN)),
            DensityFeatures(),
            StructuralHeterogeneity(),
        ]
    )


def site_featurizers() -> list:
    """The matminer featurizers of the per-site (local) features, freshly built.

    All are called as ``featurize(structure, site_index)``; see the module docstring for the
    choice and the 69 columns.

    Returns
    -------
    list
        ``[SiteElementalProperty, LocalPropertyDifference, CoordinationNumber, AverageBondLength,
        AverageBondAngle, VoronoiFingerprint]``, each with ``n_jobs = 1``.

    Raises
    ------
    FeatureDataError
        If matminer's shipped Magpie tables are missing.
    """
    from matminer.featurizers.site import (
        AverageBondAngle,
        AverageBondLength,
        CoordinationNumber,
        LocalPropertyDifference,
        SiteElementalProperty,
        VoronoiFingerprint,
    )
    from matminer.utils.data import MagpieData
    from pymatgen.analysis.local_env import CrystalNN

    check_feature_data()
    magpie = MagpieData(impute_nan=IMPUTE_NAN)
    nn = CrystalNN()
    return _serial(
        [
            SiteElementalProperty(data_source=magpie, properties=list(MAGPIE_PROPERTIES), impute_nan=IMPUTE_NAN),
            LocalPropertyDifference.from_preset("ward-prb-2017", impute_nan=IMPUTE_NAN),
            CoordinationNumber(nn, use_weights="none"),
            AverageBondLength(nn),
            AverageBondAngle(nn),
            VoronoiFingerprint(stats_vol=[], stats_area=[], stats_dist=list(VORONOI_DIST_STATS)),
        ]
    )


@functools.lru_cache(maxsize=1)
def _cached_global() -> tuple[list, tuple[str, ...]]:
    featurizers = global_featurizers()
    return featurizers, _labels_of(featurizers)


@functools.lru_cache(maxsize=1)
def _cached_site() -> tuple[list, tuple[str, ...]]:
    featurizers = site_featurizers()
    return featurizers, _labels_of(featurizers)


def _labels_of(featurizers: list) -> tuple[str, ...]:
    labels = tuple(label for f in featurizers for label in f.feature_labels())
    if len(set(labels)) != len(labels):  # pragma: no cover - guards against a featurizer change
        raise RuntimeError("duplicate feature labels among the configured featurizers")
    return labels


def global_feature_labels() -> list[str]:
    """Column names of :func:`global_features`, in order (144)."""
    check_feature_data()
    return list(_cached_global()[1])


def site_feature_labels() -> list[str]:
    """Column names of :func:`site_features`, in order (69)."""
    check_feature_data()
    return list(_cached_site()[1])


def _describe(featurizer: Any) -> str:
    name = type(featurizer).__name__
    inner = getattr(featurizer, "featurizer", None)
    if inner is not None:
        return f"{name}({_describe(inner)})"
    source = getattr(featurizer, "data_source", None)
    if source is not None:
        return f"{name}[{type(source).__name__}]"
    nn = getattr(featurizer, "method", None) or getattr(featurizer, "nn", None)
    if nn is not None:
        return f"{name}({type(nn).__name__})"
    return name


# ------------------------------------------------------------------------------------- featurizing


def _run(featurizer: Any, structure: Structure, site: int | None, n_expected: int, label: str | None) -> np.ndarray:
    """``featurizer.featurize(structure)`` (``site`` None) or ``featurize(structure, site)``, as floats.

    Known, deliberate warnings are silenced; ±inf becomes NaN; a failure is re-raised as a tdphonon
    error naming the material (``label``, else its formula), the featurizer and the site.
    """
    args = (structure,) if site is None else (structure, site)
    try:
        with warnings.catch_warnings():
            for message, category in _SILENCED_WARNINGS:
                warnings.filterwarnings("ignore", message=message, category=category)
            values = featurizer.featurize(*args)
    except FeatureDataError:
        raise
    except Exception as exc:
        if isinstance(exc, IndexError) and "no bonds" in str(exc) and site is not None:
            # AverageBondLength / AverageBondAngle when CrystalNN finds no neighbour for the site (e.g.
            # the 8-fold cation of CsCl-type TlCl): undefined, NaN (imputed downstream), as documented.
            return np.full(n_expected, np.nan)
        name = label if label is not None else structure.composition.reduced_formula
        where = "structure" if site is None else f"site {site} ({structure[site].species_string})"
        if isinstance(exc, KeyError):  # MagpieData has no such property / element: a data problem
            raise FeatureDataError(name, f"{_describe(featurizer)} found no data for {exc} ({where})") from exc
        raise StructureError(name, f"{_describe(featurizer)} failed on {where}: {type(exc).__name__}: {exc}") from exc
    out = np.asarray(values, dtype=float).reshape(-1)
    if out.size != n_expected:  # pragma: no cover - guards against a featurizer change
        raise RuntimeError(f"{_describe(featurizer)} returned {out.size} values, expected {n_expected}")
    out[~np.isfinite(out)] = np.nan
    return out


def _clear_nn_cache() -> None:
    """Empty matminer's neighbour-list cache.

    ``matminer.utils.caching`` keys its cache on ``IStructure`` equality, which ignores the order
    of the sites: after featurizing a structure, a copy with its sites reordered would get the
    *first* structure's neighbour lists, indexed by the new site numbers (wrong neighbours). The
    cache is therefore emptied before every structure.
    """
    from matminer.utils import caching

    caching._get_all_nearest_neighbors.cache_clear()


def _check_structure(structure: Any, label: str | None) -> None:
    if not isinstance(structure, Structure):
        raise TypeError(f"[{label}] expected a pymatgen Structure, got {type(structure).__name__}")
    if len(structure) == 0:
        raise StructureError(label, "structure has no sites")
    if not structure.is_ordered:
        raise StructureError(label, "partially occupied (disordered) structures are not supported by the features")


def _run_or_nan(featurizer: Any, structure: Structure, site: int | None, n_expected: int, label: str | None,
                failures: list | None) -> np.ndarray:
    """:func:`_run`; with a ``failures`` list a featurizer that fails gives NaN and is recorded there."""
    try:
        return _run(featurizer, structure, site, n_expected, label)
    except StructureError as exc:
        if failures is None:
            raise
        failures.append({"label": label, "site": site, "featurizer": _describe(featurizer), "reason": exc.reason})
        return np.full(n_expected, np.nan)


def global_features(structures: Sequence[Structure], index: Sequence[str] | None = None,
                    failures: list | None = None) -> pd.DataFrame:
    """Per-material composition + structure features (one row per structure).

    Parameters
    ----------
    structures
        Ordered pymatgen structures (elemental solids and compounds alike). Composition
        features use ``structure.composition``.
    index
        Row labels, one per structure and unique; default ``0 .. n-1``.
    failures
        If a list: a featurizer that fails on a structure (e.g. ``StructuralHeterogeneity`` finding
        no Voronoi neighbour) gives NaN for its columns and is recorded here (label, featurizer,
        reason) instead of raising, so one odd structure does not stop a campaign's analysis.

    Returns
    -------
    pandas.DataFrame
        Shape (n_structures, 144), float64, columns in the fixed order of
        :func:`global_feature_labels`, index named ``"label"``. NaN is kept where a value is
        undefined (see the module docstring); ±inf never occurs.

    Raises
    ------
    FeatureDataError
        If matminer's shipped Magpie tables are missing.
    StructureError
        For a disordered / empty structure or a featurizer that fails on it (named by its label).
    ValueError
        If ``index`` does not have one unique label per structure.
    """
    if isinstance(structures, Structure):
        raise TypeError("global_features takes a sequence of structures; wrap a single one in a list")
    structures = list(structures)
    if index is None:
        labels: list[Any] = list(range(len(structures)))
    else:
        labels = list(index)
        if len(labels) != len(structures):
            raise ValueError(f"index has {len(labels)} labels for {len(structures)} structures")
        if len(set(labels)) != len(labels):
            raise ValueError("index labels must be unique")
    check_feature_data()
    featurizers, columns = _cached_global()
    values = np.full((len(structures), len(columns)), np.nan)
    for row, (structure, label) in enumerate(zip(structures, labels, strict=True)):
        name = str(label) if index is not None else None
        _check_structure(structure, name)
        _clear_nn_cache()
        parts = [_run_or_nan(f, structure, None, len(f.feature_labels()), name if name is not None else
                             structure.composition.reduced_formula, failures) for f in featurizers]
        values[row] = np.concatenate(parts)
    return pd.DataFrame(values, index=pd.Index(labels, name="label"), columns=list(columns))


def site_features(structure: Structure, sites: Sequence[int], failures: list | None = None,
                  label: str | None = None) -> pd.DataFrame:
    """Per-site local-environment features of selected sites of one structure.

    Parameters
    ----------
    structure
        Ordered pymatgen structure.
    sites
        pymatgen site indices (0 ≤ i < len(structure), unique), e.g. one representative per
        symmetry-distinct site.
    failures, label
        As for :func:`global_features` (``label`` names the material in errors and records).

    Returns
    -------
    pandas.DataFrame
        Shape (len(sites), 69), float64, columns in the fixed order of
        :func:`site_feature_labels`, index = the site indices (named ``"site"``); no label columns.
        NaN is kept where a value is undefined (see the module docstring).

    Raises
    ------
    FeatureDataError
        If matminer's shipped Magpie tables are missing.
    StructureError
        For a disordered / empty structure or a featurizer that fails on a site.
    IndexError
        For a site index outside the structure.
    ValueError
        For repeated site indices.
    """
    _check_structure(structure, None)
    idx = [operator.index(i) for i in sites]
    bad = [i for i in idx if not 0 <= i < len(structure)]
    if bad:
        raise IndexError(f"site indices {bad} outside 0..{len(structure) - 1}")
    if len(set(idx)) != len(idx):
        raise ValueError("site indices must be unique")
    check_feature_data()
    featurizers, columns = _cached_site()
    values = np.full((len(idx), len(columns)), np.nan)
    _clear_nn_cache()
    # Featurizer-outer loop: matminer caches one structure-wide neighbour list (lru_cache of size
    # 1, keyed by method and structure), so running all sites through one Voronoi-based featurizer
    # before the next tessellates the structure once per featurizer instead of once per site.
    start = 0
    for f in featurizers:
        width = len(f.feature_labels())
        for row, i in enumerate(idx):
            values[row, start : start + width] = _run_or_nan(f, structure, i, width, label, failures)
        start += width
    return pd.DataFrame(values, index=pd.Index(idx, name="site"), columns=list(columns))


# -------------------------------------------------------------------------------------- provenance


def _digest(labels: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(labels).encode()).hexdigest()[:16]


def feature_versions() -> dict[str, Any]:
    """Provenance of the features, to be stored with a fitted model.

    Returns
    -------
    dict
        JSON-serialisable: matminer / pymatgen versions, the featurizers (with their data source or
        neighbour method), ``impute_nan``, the feature counts and a short SHA-256 of each ordered
        column list (a model should be applied only to features with the same digest).
    """
    check_feature_data()
    g_featurizers, g_labels = _cached_global()
    s_featurizers, s_labels = _cached_site()
    return {
        "schema": _FEATURES_SCHEMA,
        "matminer": importlib.metadata.version("matminer"),
        "pymatgen": importlib.metadata.version("pymatgen"),
        "impute_nan": IMPUTE_NAN,
        "global_featurizers": [_describe(f) for f in g_featurizers],
        "site_featurizers": [_describe(f) for f in s_featurizers],
        "n_global_features": len(g_labels),
        "n_site_features": len(s_labels),
        "global_columns_sha256": _digest(g_labels),
        "site_columns_sha256": _digest(s_labels),
    }
