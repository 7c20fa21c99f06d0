"""Analysis layer: tables from documents, RF pipeline on planted targets, outliers, the report end to end."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from pymatgen.core import Lattice, Species, Structure
from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

from _emt import emt_phonon
from conftest import REFERENCE

SMALL_GRID = {"rf__n_estimators": [100], "rf__max_depth": [None], "rf__min_samples_leaf": [1, 2],
              "rf__max_features": [1.0]}


# ------------------------------------------------------------------------------------------
# random forests
# ------------------------------------------------------------------------------------------
def test_random_forest_recovers_planted_relationship():
    from tdphonon.analysis.models import fit_random_forest

    rng = np.random.default_rng(1)
    X = pd.DataFrame(rng.normal(size=(300, 8)), columns=[f"x{i}" for i in range(8)])
    X["constant"] = 1.0  # dropped by the pipeline, reported with zero importance
    X.loc[::7, "x5"] = np.nan  # imputed
    y = 2.0 * X["x0"] + X["x1"] ** 2 + 0.05 * rng.normal(size=300)
    res = fit_random_forest(X, y, target="planted", seed=3, param_grid=SMALL_GRID)
    assert res.test_r2 > 0.85 and res.cv_r2 > 0.8
    assert set(res.top_features(2)) == {"x0", "x1"}
    assert set(res.top_features(2, "impurity")) == {"x0", "x1"}
    assert "constant" not in res.used_features and res.impurity_importance["constant"] == 0.0
    assert res.n_test == 30 and res.n_train == 270  # the paper's 90/10 split
    assert res.card()["permutation_repeats"] == 10 and (res.permutation_importance_std > 0).any()
    # same seed, same model; one shuffle per feature: same forest, importances without a spread
    again = fit_random_forest(X, y, target="planted", seed=3, param_grid=SMALL_GRID, n_repeats=1)
    assert again.test_r2 == res.test_r2 and again.test_index == res.test_index
    assert again.card()["permutation_repeats"] == 1 and (again.permutation_importance_std == 0).all()
    assert set(again.top_features(2)) == {"x0", "x1"}
    with pytest.raises(ValueError, match="positive integer"):
        fit_random_forest(X, y, n_repeats=0)
    # a target unrelated to the features is not "learned"
    noise = fit_random_forest(X, rng.normal(size=300), seed=3, param_grid=SMALL_GRID)
    assert noise.test_r2 < 0.2


def test_grouped_split_keeps_materials_together_and_boxcox():
    from tdphonon.analysis.models import PAPER_BOXCOX_LAMBDA, BoxCox, fit_random_forest

    rng = np.random.default_rng(0)
    n_mat, per = 60, 3
    groups = np.repeat([f"m{i}" for i in range(n_mat)], per)
    X = pd.DataFrame({"a": rng.uniform(0, 1, n_mat * per), "b": rng.normal(size=n_mat * per)})
    y = np.exp(3 * X["a"] - 4) * np.exp(0.05 * rng.normal(size=len(X)))  # log-normal-like, like R_onsite
    res = fit_random_forest(X, y, transform=BoxCox(), groups=groups, seed=0, param_grid=SMALL_GRID)
    test_groups = set(groups[list(res.test_index)])
    train_groups = set(groups) - test_groups
    assert test_groups and not (test_groups & train_groups)
    assert abs(res.transform.lmbda) < 0.15  # log-normal target -> Box-Cox λ ≈ 0 (log)
    assert res.test_r2 > 0.8 and res.top_features(1) == ["a"]
    bc = BoxCox(lmbda=PAPER_BOXCOX_LAMBDA)
    v = np.array([1e-3, 0.05, 0.15, 2.0])
    np.testing.assert_allclose(bc.inverse(bc.transform(v)), v, rtol=1e-12)
    np.testing.assert_allclose(bc.transform(v), (v ** 0.074 - 1) / 0.074)
    with pytest.raises(ValueError, match="positive"):
        BoxCox().fit(np.array([0.0, 1.0]))


def test_outlier_filter_reasons():
    from tdphonon.analysis.models import filter_outliers

    m = pd.DataFrame({"r_full": [0.1, 0.2, 0.3, np.nan], "r_onsite_max": [0.1, 0.2, 0.3, 0.1],
                      "frequency_shift": [0.05, 0.5, 0.1, 0.1]}, index=["A", "B", "C", "D"])
    kept, out = filter_outliers(m, {"A": 0.05, "C": 0.25})
    assert list(kept.index) == ["A"]
    assert "shift 50 %" in out.loc["B", "reason"] and "DFT by 25 %" in out.loc["C", "reason"]
    assert "non-finite" in out.loc["D", "reason"]


# ------------------------------------------------------------------------------------------
# ML-vs-DFT deviation
# ------------------------------------------------------------------------------------------
def _emt_phonon(structure: Structure, supercell):
    from pymatgen.io.phonopy import get_phonopy_structure

    return emt_phonon(get_phonopy_structure(structure), supercell)


def test_harmonic_deviation_is_cell_independent_and_scales():
    from tdphonon.analysis.reference import harmonic_deviation

    conv = Structure.from_spacegroup("Fm-3m", Lattice.cubic(3.61), ["Cu"], [[0, 0, 0]])
    ph_conv = _emt_phonon(conv, [2, 2, 2])
    ph_prim = _emt_phonon(conv.get_primitive_structure(), [[-3, 3, 3], [3, -3, 3], [3, 3, -3]])
    assert harmonic_deviation(ph_conv, ph_conv) == 0.0
    assert harmonic_deviation(ph_prim, ph_conv) < 0.03  # other cell + supercell, same physics
    stiff = _emt_phonon(conv, [2, 2, 2])
    stiff.force_constants = stiff.force_constants * 1.21  # all frequencies x 1.1
    assert harmonic_deviation(stiff, ph_conv) == pytest.approx(0.1, rel=1e-6)


# ------------------------------------------------------------------------------------------
# tables and the report on planted documents
# ------------------------------------------------------------------------------------------
def _prototypes() -> list[tuple[str, Structure]]:
    import sys

    from conftest import ROOT

    sys.path.insert(0, str(ROOT / "workflows"))
    import demo_structures

    recs = demo_structures.prototype_structures()
    return [(r["label"], r["structure"]) for r in recs[::3]]  # 39 real compounds, every prototype


def _planted_docs() -> list[dict]:
    """Documents with real structures and metrics planted as functions of composition / site element.

    R_full = 0.02 * mean Pauling electronegativity² ; R_onsite(site) = 0.015 * atomic mass^0.5.
    """
    from pymatgen.core import Element

    from tdphonon.structures import spacegroup

    docs = []
    for label, s in _prototypes():
        s = s.get_primitive_structure()
        comp = s.composition
        chi = sum(comp.get_atomic_fraction(e) * (e.X if np.isfinite(e.X) else 1.0) for e in comp)
        eq = SpacegroupAnalyzer(s, symprec=1e-3).get_symmetry_dataset().equivalent_atoms
        sites = []
        for rep in sorted(set(eq)):
            sites.append({"index": int(rep), "element": s[int(rep)].specie.symbol,
                          "multiplicity": int((eq == rep).sum()),
                          "r_onsite": 0.015 * Element(s[int(rep)].specie.symbol).atomic_mass ** 0.5})
        sym, num = spacegroup(s)
        r_full = 0.02 * chi ** 2
        docs.append({
            "label": label, "formula": comp.reduced_formula, "elements": sorted(e.symbol for e in comp),
            "nelements": len(comp), "nsites": len(s), "spacegroup_symbol": sym, "spacegroup_number": num,
            "crystal_system": SpacegroupAnalyzer(s).get_crystal_system(), "structure": s.as_dict(),
            "supercell_matrix": np.eye(3, dtype=int).tolist(), "n_atoms_supercell": len(s), "dedup_key": label,
            "model": {"name": "planted"}, "model_sha256": "0" * 64, "campaign": "planted", "harmonic": {},
            "temperatures": [{"temperature": 300.0, "r_full": r_full, "r_onsite_max": max(x["r_onsite"] for x in sites),
                              "r_onsite_sites": sites, "frequency_shift": r_full / 2, "anharmonicity": 0.1}],
        })
    return docs


def test_prototype_matching_on_the_restricted_library_equals_the_whole_library(monkeypatch):
    """Only prototypes with the structure's species fractions and primitive size are fitted: same answers."""
    import warnings

    import pymatgen.analysis.prototypes as pp

    from tdphonon.analysis import screening

    structures = {}
    for i, row in enumerate(pp.AFLOW_PROTOTYPE_LIBRARY[::29]):  # 10 prototypes of different kinds
        s = row["snl"].structure.copy()
        s.perturb(0.02, seed=i)
        s.scale_lattice(s.volume * 1.07)
        structures[f"lib{i}"] = s
    structures.update(_prototypes()[:3])
    # magnetite: Fe3O4 to the eye (a binary), Fe2+(8a) Fe3+(16d) O(32e) with valences: a ternary spinel
    coords = [[0, 0, 0], [0.625, 0.625, 0.625], [0.387, 0.387, 0.387]]  # pymatgen's Fd-3m: origin choice 1
    structures["Fe3O4"] = Structure.from_spacegroup("Fd-3m", Lattice.cubic(8.4), ["Fe", "Fe", "O"], coords)
    structures["Fe3O4_valences"] = Structure.from_spacegroup(
        "Fd-3m", Lattice.cubic(8.4), [Species("Fe", 2), Species("Fe", 3), Species("O", -2)], coords)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        whole = pp.PrototypeDatabaseMatcher(pd.DataFrame(pp.AFLOW_PROTOTYPE_LIBRARY))
        want = {lab: [t["tags"]["aflow"] for t in whole.get_prototypes(s) or []] for lab, s in structures.items()}
    got = screening.prototype_labels(structures)
    for lab, aflow in want.items():
        assert (got.loc[lab, "aflow"] if got.loc[lab, "source"] == "aflow" else None) == (aflow[0] if aflow else None)
    assert sum(bool(v) for v in want.values()) >= 10  # most of them matched something
    assert got.loc["Fe3O4_valences", "prototype"] == "Spinel" and got.loc["Fe3O4", "prototype"] != "Spinel"
    # pymatgen before PrototypeDatabaseMatcher: the whole-library AflowPrototypeMatcher, same labels
    monkeypatch.delattr(pp, "PrototypeDatabaseMatcher")
    monkeypatch.setattr(screening, "_MATCHERS", {})
    few = {lab: structures[lab] for lab in ("lib0", "Fe3O4_valences")}
    pd.testing.assert_frame_equal(screening.prototype_labels(few), got.loc[list(few)])


def test_tables_and_report_from_planted_documents(tmp_path):
    from tdphonon.analysis.data import EXCLUSIONS, excluded_materials, material_frame, site_frame
    from tdphonon.analysis.report import analyze

    docs = _planted_docs()
    docs[1]["temperatures"][0]["outliers"] = [{"configuration": 3}, {"configuration": 2}]
    docs[1]["harmonic"] = {"step_check": {"step_sensitive": True}}
    m, s = material_frame(docs), site_frame(docs)
    assert len(m) == len(docs) >= 35
    lab = docs[1]["label"]
    assert m.loc[lab, "n_dropped_configurations"] == 2 and m.loc[lab, "step_sensitive"] is True
    assert m["n_dropped_configurations"].sum() == 2 and m["n_clipped_atoms"].sum() == 0
    assert m.drop(lab)["step_sensitive"].isna().all()
    assert excluded_materials(m, ["step_sensitive", "cut_samples"]) == {lab: EXCLUSIONS["step_sensitive"]}
    assert excluded_materials(m, ["imaginary_fixed_points"]) == {}
    assert (s.groupby("label")["multiplicity"].sum().reindex(m.index) == m["nsites"]).all()
    # structure_index points at an atom of the site's element
    for _, row in s.iterrows():
        assert m.loc[row["label"], "structure"][row["structure_index"]].specie.symbol == row["element"]
    # one material with a 60 % shift: an outlier left out of the fits
    docs[0]["temperatures"][0]["frequency_shift"] = 0.6
    # docs[1], whose sample was cut, is left out on request (everywhere: tables, trends, screening, fits)
    with pytest.raises(ValueError, match="unknown exclusion"):
        analyze(tmp_path / "bad", docs=docs, exclude=["cut_sample"])
    res = analyze(tmp_path / "rep", docs=docs, campaign="planted", threshold=0.15, param_grid=SMALL_GRID,
                  site_split="material", permutation_repeats=3, exclude=["cut_samples"])
    sm = res.summary
    assert sm["permutation_repeats"] == 3
    assert sm["excluded"] == [{"label": lab, "reason": EXCLUSIONS["cut_samples"]}] and sm["exclude"] == ["cut_samples"]
    assert sm["n_materials"] == len(docs) - 1
    assert sm["n_outliers"] == 1 and sm["outliers"][0]["label"] == docs[0]["label"]
    s = s[s["label"] != lab]
    assert sm["global_model"]["fitted"] and sm["local_model"]["fitted"]
    # R_onsite is a function of the site element's mass only: the local model finds it
    assert sm["local_model_test_r2"] > 0.9
    assert any("AtomicWeight" in f for f in sm["top_features_local"][:2])
    # R_full is a function of the mean electronegativity: it leads the global importances
    assert "MagpieData mean Electronegativity" in sm["top_features_global"][:3]
    # screening: sites with 0.015 sqrt(M) >= 0.15, i.e. M >= 100 amu
    n_heavy = int((s["r_onsite"] >= 0.15).sum())
    assert sm["n_candidates"] == n_heavy > 0
    cand = json.loads((tmp_path / "rep" / "candidates" / "candidates.json").read_text())
    assert all(site["r_onsite"] >= 0.15 for c in cand for site in c["sites"])
    from tdphonon.campaign import read_inputs

    mats, skipped = read_inputs(tmp_path / "rep" / "candidates" / "candidates.json")
    assert not skipped and sorted(x.label for x in mats) == sorted(c["label"] for c in cand)
    # trend tables behind the figures
    elem = pd.read_csv(tmp_path / "rep" / "element_onsite.csv", index_col=0)
    from pymatgen.core import Element

    for el, row in elem.iterrows():
        assert row["max"] == pytest.approx(0.015 * float(Element(el).atomic_mass) ** 0.5, rel=1e-9)
    sg = pd.read_csv(tmp_path / "rep" / "spacegroup_shift.csv", index_col=0)
    assert sg["n_materials"].sum() == len(docs) - 2  # trends leave the outlier (and the excluded one) out
    assert lab not in set(pd.read_csv(tmp_path / "rep" / "materials.csv")["label"])
    protos = pd.read_csv(tmp_path / "rep" / "prototypes.csv", index_col=0)
    assert {"Halite, Rock Salt", "(Cubic) Perovskite", "Zincblende, Sphalerite"} <= set(protos.index)
    html = (tmp_path / "rep" / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 8 and "Random-forest models" in html
    assert "1 materials excluded on request (cut_samples)" in html
    for name in ("global_model", "local_model"):
        card = json.loads((tmp_path / "rep" / name / "model_card.json").read_text())
        assert card["features"] and card["feature_versions"]["matminer"] and "scikit-learn" in card["packages"]
        assert card["permutation_repeats"] == sm[name]["permutation_repeats"] == 3
        import joblib

        pipe = joblib.load(tmp_path / "rep" / name / "model.joblib")
        assert hasattr(pipe, "predict")


# ------------------------------------------------------------------------------------------
# a small real campaign (offline MLIP) through the CLI
# ------------------------------------------------------------------------------------------
@pytest.mark.mlip
def test_analyze_cli_on_a_real_campaign(chgnet, tmp_path, srtio3_cif):
    from typer.testing import CliRunner

    from tdphonon.cli import app

    inp = tmp_path / "in"
    inp.mkdir()
    Structure.from_spacegroup("Fd-3m", Lattice.cubic(5.45), ["Si"], [[0, 0, 0]]).get_primitive_structure().to(
        filename=str(inp / "Si.cif"))
    Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.65), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]) \
        .get_primitive_structure().to(filename=str(inp / "NaCl.cif"))
    (inp / "SrTiO3.cif").write_text(srtio3_cif.read_text())
    store = tmp_path / "store"
    r = CliRunner()
    res = r.invoke(app, ["campaign", str(inp), "--local", str(store), "-m", "chgnet", "-c", "small",
                         "--n-configurations", "4", "--no-relax", "--supercell", "2 2 2", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    args = ["analyze", "--local", str(store), "-c", "small", "-o", str(tmp_path / "rep")]
    if REFERENCE.is_dir():  # ML-vs-DFT check of NaCl against the PBE finite-displacement set
        manifest = tmp_path / "manifest.json"
        manifest.write_text(json.dumps([{"label": "NaCl", "reference": str(
            REFERENCE / "phonopy" / "test" / "phonopy_params_NaCl-fd.yaml.xz")}]))
        args += ["--manifest", str(manifest)]
    res = r.invoke(app, args)
    assert res.exit_code == 0, res.output
    sm = json.loads((tmp_path / "rep" / "analysis.json").read_text())
    assert sm["n_materials"] == 3 and sm["models"] == ["CHGNet-0.3.0"]
    n_fit = 3 - sm["n_outliers"]
    assert not sm["global_model"]["fitted"] and f"{n_fit} samples (< 20)" in sm["global_model"]["reason"]
    m = pd.read_csv(tmp_path / "rep" / "materials.csv", index_col="label")
    docs = json.loads(r.invoke(app, ["query", "--local", str(store), "--format", "json"]).stdout)
    for d in docs:
        assert m.loc[d["label"], "r_onsite_max"] == pytest.approx(d["temperatures"][0]["r_onsite_max"])
    sites = pd.read_csv(tmp_path / "rep" / "sites.csv")
    assert sorted(sites.loc[sites["label"] == "SrTiO3", "element"]) == ["O", "Sr", "Ti"]
    if REFERENCE.is_dir():
        dev = sm["dft_harmonic_deviation"]["NaCl"]
        assert 0.0 < dev < 1.0
        assert (dev > 0.2) == any(o["label"] == "NaCl" for o in sm["outliers"])
    assert "data:image/png;base64," in (tmp_path / "rep" / "report.html").read_text()
    # no results: a clear error, exit code 2
    res = r.invoke(app, ["analyze", "--local", str(store), "-c", "nonexistent", "-o", str(tmp_path / "x")])
    assert res.exit_code == 2 and "no campaign results" in res.output
    res = r.invoke(app, ["analyze", "--local", str(store), "-c", "small", "-o", str(tmp_path / "y"),
                         "--permutation-repeats", "0"])
    assert res.exit_code == 2 and "permutation-repeats" in res.output
