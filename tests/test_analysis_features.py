"""Tests of tdphonon.analysis.features (matminer descriptors of the anharmonicity random forests)."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pandas as pd
import pytest
from pymatgen.core import Lattice, Structure
from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

from tdphonon.analysis import features
from tdphonon.analysis.features import (
    FeatureDataError,
    check_feature_data,
    feature_versions,
    global_feature_labels,
    global_features,
    global_featurizers,
    site_feature_labels,
    site_features,
    site_featurizers,
)
from tdphonon.errors import StructureError, TDPhononError

A_NACL = 5.64
A_STO = 3.905
N_GLOBAL = 132 + 3 + 9  # Magpie statistics + DensityFeatures + StructuralHeterogeneity
N_SITE = 22 + 22 + 3 + 22  # site property + local difference + CN/bond length/angle + Voronoi


@pytest.fixture(scope="module")
def nacl() -> Structure:
    return Structure.from_spacegroup("Fm-3m", Lattice.cubic(A_NACL), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])


@pytest.fixture(scope="module")
def sto() -> Structure:
    return Structure.from_spacegroup(
        "Pm-3m", Lattice.cubic(A_STO), ["Sr", "Ti", "O"], [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0]]
    )


@pytest.fixture(scope="module")
def gframe(nacl, sto) -> pd.DataFrame:
    return global_features([nacl, sto], index=["NaCl", "SrTiO3"])


@pytest.fixture(scope="module")
def sframes(nacl, sto) -> dict[str, pd.DataFrame]:
    return {"NaCl": site_features(nacl, range(len(nacl))), "SrTiO3": site_features(sto, range(len(sto)))}


def _indices(structure: Structure, symbol: str) -> list[int]:
    return [i for i, site in enumerate(structure) if site.species_string == symbol]


# ------------------------------------------------------------------------------------ counts, finite


def test_global_feature_counts_and_finite(gframe, si_structure):
    assert gframe.shape == (2, N_GLOBAL)
    assert list(gframe.index) == ["NaCl", "SrTiO3"]
    assert gframe.index.name == "label"
    assert list(gframe.columns) == global_feature_labels()
    assert sum(c.startswith("MagpieData ") for c in gframe.columns) == 132
    assert {"density", "vpa", "packing fraction", "mean neighbor distance variation"} <= set(gframe.columns)
    assert all(dtype == np.float64 for dtype in gframe.dtypes)
    assert np.isfinite(gframe.to_numpy()).all()

    elemental = global_features([si_structure])  # an elemental solid, default index
    assert elemental.shape == (1, N_GLOBAL)
    assert list(elemental.index) == [0]
    assert np.isfinite(elemental.to_numpy()).all()


def test_site_feature_counts_and_finite(sframes, nacl, sto):
    for name, structure in (("NaCl", nacl), ("SrTiO3", sto)):
        frame = sframes[name]
        assert frame.shape == (len(structure), N_SITE)
        assert list(frame.index) == list(range(len(structure)))
        assert frame.index.name == "site"
        assert list(frame.columns) == site_feature_labels()
        assert all(dtype == np.float64 for dtype in frame.dtypes)
        assert np.isfinite(frame.to_numpy()).all()
    subset = site_features(sto, [4, 1])  # order of the request is kept
    assert list(subset.index) == [4, 1]
    pd.testing.assert_frame_equal(subset, sframes["SrTiO3"].loc[[4, 1]])


def test_featurizers_are_serial_and_listed():
    for featurizer in global_featurizers() + site_featurizers():
        assert featurizer.n_jobs == 1
    assert len(global_featurizers()) == 3
    assert len(site_featurizers()) == 6


def test_feature_versions_is_json_provenance():
    info = feature_versions()
    json.dumps(info)
    assert info["n_global_features"] == N_GLOBAL
    assert info["n_site_features"] == N_SITE
    assert info["impute_nan"] is False
    assert info["matminer"] and info["pymatgen"]
    assert "StructureComposition(ElementProperty[MagpieData])" in info["global_featurizers"]
    assert "CoordinationNumber(CrystalNN)" in info["site_featurizers"]


# ------------------------------------------------------------------------- agreement with matminer


@pytest.mark.parametrize("name", ["NaCl", "SrTiO3"])
def test_global_values_match_direct_matminer(name, gframe, nacl, sto):
    from matminer.featurizers.composition import ElementProperty
    from matminer.featurizers.structure import DensityFeatures, StructuralHeterogeneity

    structure = {"NaCl": nacl, "SrTiO3": sto}[name]
    row = gframe.loc[name]
    for featurizer, entry in (
        (ElementProperty.from_preset("magpie", impute_nan=False), structure.composition),
        (DensityFeatures(), structure),
        (StructuralHeterogeneity(), structure),
    ):
        expected = np.asarray(featurizer.featurize(entry), dtype=float)
        np.testing.assert_allclose(row[featurizer.feature_labels()].to_numpy(), expected, rtol=1e-12, atol=1e-12)

    assert row["vpa"] == pytest.approx(structure.volume / len(structure))
    # stoichiometry-weighted mean atomic mass = formula mass / atoms per formula unit
    formula_mass, atoms = {"NaCl": (22.98977 + 35.453, 2), "SrTiO3": (87.62 + 47.867 + 3 * 15.9994, 5)}[name]
    assert row["MagpieData mean AtomicWeight"] == pytest.approx(formula_mass / atoms, rel=1e-4)


def test_site_values_match_direct_matminer(sframes, nacl, sto):
    from matminer.featurizers.site import LocalPropertyDifference, SiteElementalProperty

    for name, structure in (("NaCl", nacl), ("SrTiO3", sto)):
        frame = sframes[name]
        for featurizer in (
            LocalPropertyDifference.from_preset("ward-prb-2017", impute_nan=False),
            SiteElementalProperty(properties=list(features.MAGPIE_PROPERTIES), impute_nan=False),
        ):
            for i in range(len(structure)):
                expected = np.asarray(featurizer.featurize(structure, i), dtype=float)
                np.testing.assert_allclose(frame.loc[i, featurizer.feature_labels()].to_numpy(), expected, rtol=1e-12)
        # the Voronoi cells tile the unit cell
        assert frame["Voro_vol_sum"].sum() == pytest.approx(structure.volume, rel=1e-6)


def test_coordination_and_bonds(sframes, nacl, sto):
    salt, perovskite = sframes["NaCl"], sframes["SrTiO3"]
    for i in range(len(nacl)):  # rocksalt: octahedra of the other ion at a/2
        assert salt.loc[i, "CN_CrystalNN"] == 6
        assert salt.loc[i, "Average bond length"] == pytest.approx(A_NACL / 2, rel=1e-9)
        assert salt.loc[i, "Average bond angle"] == pytest.approx(math.pi / 2, rel=1e-9)
    (ti,) = _indices(sto, "Ti")
    (sr,) = _indices(sto, "Sr")
    oxygens = _indices(sto, "O")
    assert perovskite.loc[ti, "CN_CrystalNN"] == 6
    assert perovskite.loc[ti, "Average bond length"] == pytest.approx(A_STO / 2, rel=1e-9)
    assert perovskite.loc[sr, "CN_CrystalNN"] == 12
    assert perovskite.loc[sr, "Average bond length"] == pytest.approx(A_STO / math.sqrt(2), rel=1e-9)
    for o in oxygens:  # linear Ti–O–Ti
        assert perovskite.loc[o, "CN_CrystalNN"] == 2
        assert perovskite.loc[o, "Average bond length"] == pytest.approx(A_STO / 2, rel=1e-9)
        assert perovskite.loc[o, "Average bond angle"] == pytest.approx(math.pi, rel=1e-9)
    assert perovskite.loc[ti, "site Number"] == 22
    assert perovskite.loc[ti, "local difference in Number"] == pytest.approx(22 - 8)


# ------------------------------------------------------------------------------------ invariances


@pytest.mark.parametrize("name", ["NaCl", "SrTiO3"])
def test_equivalent_sites_have_identical_features(name, sframes, nacl, sto):
    structure = {"NaCl": nacl, "SrTiO3": sto}[name]
    frame = sframes[name]
    groups = SpacegroupAnalyzer(structure).get_symmetrized_structure().equivalent_indices
    assert sorted(len(g) for g in groups) == ({"NaCl": [4, 4], "SrTiO3": [1, 1, 3]}[name])
    for group in groups:
        values = frame.loc[group].to_numpy()
        np.testing.assert_allclose(values, np.broadcast_to(values[0], values.shape), rtol=1e-9, atol=1e-9)


def test_global_features_are_cell_invariant(nacl, gframe):
    primitive = SpacegroupAnalyzer(nacl).get_primitive_standard_structure()
    assert len(primitive) == 2
    prim = global_features([primitive], index=["NaCl"])
    pd.testing.assert_frame_equal(prim, gframe.loc[["NaCl"]], rtol=1e-7, atol=1e-9)


def test_reordered_structure_gets_its_own_neighbours(nacl, sframes):
    # matminer caches neighbour lists by IStructure equality, which ignores site order
    reordered = Structure.from_sites(list(reversed(nacl.sites)))
    frame = site_features(reordered, [0])
    assert reordered[0].species_string == "Cl"
    cl = _indices(nacl, "Cl")[0]
    np.testing.assert_allclose(frame.loc[0].to_numpy(), sframes["NaCl"].loc[cl].to_numpy(), rtol=1e-9, atol=1e-9)


def test_no_neighbour_warnings_leak(sto):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        site_features(sto, [1, 2])
    messages = [str(w.message) for w in caught]
    assert not [m for m in messages if "CrystalNN" in m or "oxidation states" in m], messages


# ------------------------------------------------------------------------------------ missing data


def test_missing_element_data_stays_nan():
    # Magpie has no electronegativity for Ar: NaN (impute_nan=False), never inf or a silent average
    cscl_like = Structure(Lattice.cubic(3.5), ["Ar", "Na"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    row = global_features([cscl_like], index=["ArNa"]).loc["ArNa"]
    assert math.isnan(row["MagpieData mean Electronegativity"])
    assert row["MagpieData mean Number"] == pytest.approx(14.5)
    assert not np.isinf(row.to_numpy()).any()


def test_check_feature_data_on_missing_folder(tmp_path):
    assert check_feature_data().is_dir()  # the tables shipped with matminer are there
    with pytest.raises(FeatureDataError, match="data folder not found") as info:
        check_feature_data(tmp_path / "nowhere")
    assert isinstance(info.value, TDPhononError)
    assert "reinstall matminer" in str(info.value)


def test_check_feature_data_names_missing_tables(tmp_path):
    for prop in features.MAGPIE_PROPERTIES[:-2]:
        (tmp_path / f"{prop}.table").write_text("1.0\n")
    (tmp_path / "GSmagmom.table").write_text("")  # empty counts as missing
    with pytest.raises(FeatureDataError, match=r"missing or empty .*GSmagmom\.table, SpaceGroupNumber\.table"):
        check_feature_data(tmp_path)


def test_featurizing_without_tables_raises(monkeypatch, tmp_path, nacl):
    monkeypatch.setattr(features, "magpie_data_dir", lambda: tmp_path / "magpie_elementdata")
    for call in (
        global_featurizers,
        site_featurizers,
        feature_versions,
        lambda: global_features([nacl]),
        lambda: site_features(nacl, [0]),
    ):
        with pytest.raises(FeatureDataError, match="Magpie element-property data folder not found"):
            call()


def test_featurizer_failure_names_material_and_site(monkeypatch, nacl):
    class Broken:
        def featurize(self, structure, idx):
            raise IndexError("Input structure has no bonds.")

        def feature_labels(self):
            return ["broken"]

    monkeypatch.setattr(features, "_cached_site", lambda: ([Broken()], ("broken",)))
    # "no bonds" (CrystalNN found no neighbour): bond features undefined -> NaN, not a failure
    assert np.isnan(site_features(nacl, [5]).to_numpy()).all()

    class Failing(Broken):
        def featurize(self, structure, idx):
            raise RuntimeError("boom")

    monkeypatch.setattr(features, "_cached_site", lambda: ([Failing()], ("broken",)))
    with pytest.raises(StructureError, match=r"\[NaCl\] Failing failed on site 5 \(Cl\): RuntimeError: boom"):
        site_features(nacl, [5])
    # with a failures list (what the campaign analysis uses): NaN for that featurizer, recorded
    failures = []
    assert np.isnan(site_features(nacl, [5], failures=failures, label="NaCl-x").to_numpy()).all()
    assert failures == [{"label": "NaCl-x", "site": 5, "featurizer": "Failing", "reason": failures[0]["reason"]}]
    assert "boom" in failures[0]["reason"]


# ------------------------------------------------------------------------------------- validation


def test_input_validation(nacl):
    with pytest.raises(TypeError):
        global_features(nacl)
    with pytest.raises(ValueError, match="labels for"):
        global_features([nacl], index=["a", "b"])
    with pytest.raises(ValueError, match="unique"):
        global_features([nacl, nacl], index=["a", "a"])
    with pytest.raises(IndexError):
        site_features(nacl, [len(nacl)])
    with pytest.raises(ValueError, match="unique"):
        site_features(nacl, [0, 0])
    disordered = nacl.copy()
    disordered.replace_species({"Na": {"Na": 0.5, "K": 0.5}})
    with pytest.raises(StructureError, match="disordered"):
        global_features([disordered], index=["NaKCl"])
