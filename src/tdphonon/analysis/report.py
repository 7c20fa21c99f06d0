"""``tdphonon analyze``: trends, random-forest models, screening and a self-contained HTML report.

:func:`analyze` reads a campaign's results (MongoDB job store or the file store of
``tdphonon campaign --local``) and writes into ``out``::

    materials.csv, sites.csv                 the data (one row per material / per distinct site)
    outliers.csv                             materials left out of the fits, with the reason
    element_onsite.csv/.png                  periodic-table heat map of R_onsite (log scale)
    spacegroup_shift.csv/.png                mean frequency shift per space group, by crystal system
    distributions.png                        R_full, R_onsite, shift histograms
    prototypes.csv/.png                      R_onsite per structural prototype
    candidates.csv, candidates/              sites with R_onsite >= threshold; export for validation
    features_global.csv, features_site.csv   the matminer features
    global_model/, local_model/              joblib pipeline + model card, importances, parity plots
    analysis.json                            the summary (machine-readable)
    report.html                              everything above, figures embedded (base64)
"""

from __future__ import annotations

import base64
import html
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tdphonon.analysis import data as _data
from tdphonon.analysis import features as _features
from tdphonon.analysis import models as _models
from tdphonon.analysis import screening as _screening
from tdphonon.analysis import trends as _trends
from tdphonon.errors import TDPhononError

__all__ = ["AnalysisResult", "analyze", "references_from_manifest"]

MIN_SAMPLES_FOR_MODEL = 20


@dataclass
class AnalysisResult:
    """What :func:`analyze` wrote: the summary dict, the report path and every file by name."""

    summary: dict[str, Any]
    report_path: Path
    files: dict[str, Path] = field(default_factory=dict)


def references_from_manifest(manifest: str | Path) -> dict[str, str]:
    """label → DFT reference path from a structure manifest (``workflows/demo_structures.py``)."""
    entries = json.loads(Path(manifest).read_text())
    return {e["label"]: e["reference"] for e in entries if e.get("reference")}


def _match_references(materials: pd.DataFrame, root: str | Path) -> dict[str, str]:
    """label → reference path, matching reduced formula + space group number of every set below ``root``."""
    from pymatgen.io.phonopy import get_pmg_structure

    from tdphonon.evaluation import iter_reference_sets
    from tdphonon.structures import spacegroup

    wanted = {(r.reduced_formula, int(r.spacegroup_number)): lab for lab, r in materials.iterrows()}
    out = {}
    for _, loader in iter_reference_sets(root):
        try:
            ref = loader()
            s = get_pmg_structure(ref.phonon.unitcell)
        except Exception:  # unreadable reference sets are simply not used for the filter
            continue
        lab = wanted.get((s.composition.reduced_formula, spacegroup(s)[1]))
        if lab and lab not in out:
            out[lab] = str(ref.path)
    return out


def _fit(name: str, X: pd.DataFrame, y: pd.Series, out: Path, files: dict, seed: int, transform=None,
         groups=None, param_grid=None, extra: Mapping[str, Any] | None = None,
         permutation_repeats: int = 10) -> dict[str, Any]:
    """Fit one RF model, save it with its figures; returns its summary (or why it was not fitted)."""
    if len(y) < MIN_SAMPLES_FOR_MODEL:
        return {"fitted": False, "reason": f"{len(y)} samples (< {MIN_SAMPLES_FOR_MODEL})"}
    res = _models.fit_random_forest(X, y, target=name, transform=transform, groups=groups, seed=seed,
                                    param_grid=param_grid, n_repeats=permutation_repeats)
    d = out / f"{'global' if name == 'r_full' else 'local'}_model"
    saved = _models.save_model(res, d, extra={**dict(extra or {}), "feature_versions": _features.feature_versions()})
    files[f"{d.name}_card"] = saved["card"]
    files[f"{d.name}_importances"] = _models.plot_importances(res, d / "importances.png",
                                                              title=f"{name}: top-10 features")
    files[f"{d.name}_parity"] = _models.plot_parity(res, d / "parity.png")
    pd.DataFrame({"impurity": res.impurity_importance,
                  "permutation": res.permutation_importance}).to_csv(d / "importances.csv")
    return {"fitted": True, "test_r2": res.test_r2, "test_mae": res.test_mae, "cv_r2": res.cv_r2,
            "train_r2": res.train_r2, "test_r2_original_scale": res.test_r2_original,
            "n_train": res.n_train, "n_test": res.n_test, "best_params": res.best_params,
            "permutation_repeats": res.permutation_repeats,
            "transform": res.transform.to_dict() if res.transform else None,
            "top_features_permutation": res.top_features(10), "top_features_impurity": res.top_features(10, "impurity")}


def analyze(out: str | Path, store=None, store_dir: str | Path | None = None,
            docs: Sequence[Mapping[str, Any]] | None = None, campaign: str | None = None,
            model: str | None = None, temperature: float | None = None, threshold: float = 0.15,
            manifest: str | Path | None = None, reference: str | Path | None = None,
            boxcox_lambda: float | str | None = "fit", seed: int = 0,
            param_grid: Mapping[str, list] | None = None, site_split: str = "random",
            permutation_repeats: int = 10, exclude: Sequence[str] = ()) -> AnalysisResult:
    """Analyse a campaign and write the report (see the module docstring).

    Parameters
    ----------
    out
        Output folder.
    store, store_dir, docs
        Where the results come from: a jobflow ``JobStore`` (e.g. MongoDB from ``jobflow.yaml``), the
        folder of a local file store, or the documents themselves.
    campaign, model, temperature
        Filters (temperature default: the most common one).
    threshold
        Screening threshold on R_onsite (paper: 0.15).
    manifest, reference
        DFT references for the > 20 % harmonic outlier filter: a structure manifest with
        ``reference`` paths, or a folder of reference sets matched by formula + space group.
    boxcox_lambda
        R_onsite transform of the local model: ``"fit"`` (maximum likelihood on the training
        sites), a number (the paper: 0.074) or ``None`` (no transform).
    seed
        Split / forest / permutation seed.
    site_split
        Local model split: ``"random"`` over sites (the paper's 90/10) or ``"material"`` (all sites
        of a material on one side: stricter, no shared chemical context between train and test).
    permutation_repeats
        Shuffles per feature of the permutation importances (default 10). The importances are the
        slowest part of the report on large campaigns; fewer repeats are faster and noisier.
    exclude
        Materials to leave out of everything (tables, trends, screening, models), by name of
        :data:`tdphonon.analysis.data.EXCLUSIONS`: ``"imaginary_fixed_points"``, ``"step_sensitive"``,
        ``"cut_samples"`` (judged at the analysed temperature). The summary lists them with the reason.
    """
    if site_split not in ("random", "material"):
        raise ValueError(f"site_split must be 'random' or 'material', not {site_split!r}")
    permutation_repeats = _models.permutation_repeats(permutation_repeats)  # fail before the slow steps
    exclude = _data.check_exclusions(exclude)  # before any result is read
    t0 = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}
    if docs is None:
        if store is None:
            if store_dir is None:
                raise TDPhononError(campaign or "analysis", "no results given (store, store_dir or docs)")
            from tdphonon.campaign import local_store

            if not (Path(store_dir) / "docs.json").exists():
                raise TDPhononError(campaign or "analysis", f"no campaign store in {store_dir}")
            store = local_store(store_dir)
        docs = _data.load_results(store, campaign=campaign, model=model, temperature=temperature)
    temp = _data.pick_temperature(docs, temperature)
    materials = _data.material_frame(docs, temp)
    sites = _data.site_frame(docs, temp)
    left_out = _data.excluded_materials(materials, exclude)
    if left_out:
        if len(left_out) == len(materials):
            raise TDPhononError(campaign or "analysis", f"every material is excluded by {list(exclude)}")
        materials = materials.drop(index=list(left_out))
        sites = sites[~sites["label"].isin(left_out)]

    # --- outliers (paper: ML vs DFT harmonic > 20 %, renormalised shift > 40 %) ----------------
    refs: dict[str, str] = {}
    if manifest:
        refs.update({k: v for k, v in references_from_manifest(manifest).items() if k in materials.index})
    if reference and not refs:
        refs = _match_references(materials, reference)
    deviations: dict[str, float] = {}
    ref_problems: list[dict] = []
    if refs:
        from tdphonon.analysis.reference import reference_deviations

        if store is not None:
            from tdphonon.campaign import query

            with_arrays = [d for lab in refs
                           for d in query(store, load_arrays=True, campaign=campaign, model=model, label=lab)]
        else:
            with_arrays = [d for d in docs if d["label"] in refs and "harmonic" in (d.get("force_constants") or {})]
        deviations, ref_problems = reference_deviations(with_arrays, refs)
    materials["dft_harmonic_deviation"] = [deviations.get(lab, np.nan) for lab in materials.index]
    kept, outliers = _models.filter_outliers(materials, deviations)
    outliers.drop(columns=["structure"]).to_csv(out / "outliers.csv")
    files["outliers"] = out / "outliers.csv"

    # --- prototypes, tables, trend figures -----------------------------------------------------
    protos = _screening.prototype_labels(dict(materials["structure"].items()))
    materials["prototype"] = protos["prototype"]
    materials.drop(columns=["structure"]).to_csv(out / "materials.csv", index=False)
    sites.to_csv(out / "sites.csv", index=False)
    files.update(materials=out / "materials.csv", sites=out / "sites.csv")
    # trend figures on the materials kept by the outlier filter (as the paper); tables say so
    trend_m = materials.loc[kept.index]
    trend_s = sites[sites["label"].isin(kept.index)]
    excluded = f", {len(outliers)} outliers excluded" if len(outliers) else ""
    elem = _trends.element_onsite(trend_s)
    elem.to_csv(out / "element_onsite.csv")
    files["element_onsite"] = _trends.plot_element_heatmap(
        elem, out / "element_onsite.png",
        title=f"R_onsite per element at {temp:g} K (geometric mean over sites{excluded})")
    sg = _trends.spacegroup_shift(trend_m)
    sg.to_csv(out / "spacegroup_shift.csv")
    files["spacegroup_shift"] = _trends.plot_spacegroup_shift(sg, float(trend_m["frequency_shift"].mean()),
                                                              out / "spacegroup_shift.png")
    files["distributions"] = _trends.plot_distributions(materials, sites, out / "distributions.png", threshold)
    proto_table = _screening.plot_prototypes(materials, out / "prototypes.png", threshold=threshold)
    proto_table.to_csv(out / "prototypes.csv")
    files["prototypes"] = out / "prototypes.png"

    # --- screening + export for the validation branch ------------------------------------------
    cand = _screening.screen(sites, threshold)
    cand["prototype"] = [materials.loc[lab, "prototype"] for lab in cand["label"]]
    cand.to_csv(out / "candidates.csv", index=False)
    files["candidates"] = _screening.export_candidates(cand, materials, out / "candidates")

    # --- features + random-forest models -------------------------------------------------------
    feature_failures: list[dict] = []
    gfeat = _features.global_features(list(materials["structure"]), index=list(materials.index),
                                      failures=feature_failures)
    gfeat.to_csv(out / "features_global.csv")
    sfeat_parts = []
    for lab, grp in sites.groupby("label", sort=False):
        f = _features.site_features(materials.loc[lab, "structure"], list(grp["structure_index"]),
                                    failures=feature_failures, label=lab)
        f.index = grp.index
        sfeat_parts.append(f)
    sfeat = pd.concat(sfeat_parts).loc[sites.index] if sfeat_parts else pd.DataFrame(index=sites.index)
    pd.concat([sites[["label", "element", "structure_index"]], sfeat], axis=1).to_csv(out / "features_site.csv")
    keep_sites = sites["label"].isin(kept.index).to_numpy()
    common = {"campaign": campaign, "temperature": temp, "n_outliers": len(outliers)}
    g_model = _fit("r_full", gfeat.loc[kept.index], kept["r_full"], out, files, seed, param_grid=param_grid,
                   extra=common, permutation_repeats=permutation_repeats)
    if boxcox_lambda is None:
        transform = None
    else:
        lam = None if boxcox_lambda == "fit" else float(boxcox_lambda)
        transform = _models.BoxCox(lmbda=lam, shift=1e-6)
    l_model = _fit("r_onsite", sfeat.loc[keep_sites], sites.loc[keep_sites, "r_onsite"], out, files, seed,
                   transform=transform, param_grid=param_grid, extra={**common, "site_split": site_split},
                   permutation_repeats=permutation_repeats,
                   groups=sites.loc[keep_sites, "label"].to_numpy() if site_split == "material" else None)

    summary = {
        "campaign": campaign, "temperature": temp, "n_materials": len(materials), "n_sites": len(sites),
        "exclude": list(exclude), "excluded": [{"label": lab, "reason": r} for lab, r in left_out.items()],
        "n_materials_in_fits": len(kept), "n_outliers": len(outliers),
        "outliers": [{"label": lab, "reason": r} for lab, r in outliers["reason"].items()],
        "n_dft_references": len(refs), "dft_harmonic_deviation": deviations, "reference_problems": ref_problems,
        "models": sorted(set(materials["model"])), "model_sha256": sorted(set(materials["model_sha256"])),
        "threshold": threshold, "n_candidates": len(cand), "n_candidate_materials": int(cand["label"].nunique()),
        "candidates": cand.head(30).to_dict("records"),
        "global_model": g_model, "local_model": {**l_model, "site_split": site_split},
        "global_model_test_r2": g_model.get("test_r2"), "local_model_test_r2": l_model.get("test_r2"),
        "top_features_global": g_model.get("top_features_permutation", []),
        "top_features_local": l_model.get("top_features_permutation", []),
        "n_global_features": gfeat.shape[1], "n_site_features": sfeat.shape[1],
        "feature_failures": feature_failures,
        "mean_frequency_shift": float(materials["frequency_shift"].mean()),
        "median_r_full": float(materials["r_full"].median()),
        "median_r_onsite_max": float(materials["r_onsite_max"].median()),
        "elements_by_r_onsite": elem["geometric_mean"].head(10).to_dict(),
        "prototypes": proto_table.head(15).to_dict("index"),
        "seed": seed, "permutation_repeats": permutation_repeats, "seconds": time.perf_counter() - t0,
    }
    files["summary"] = out / "analysis.json"
    files["summary"].write_text(json.dumps(summary, indent=1, default=_json))
    report = write_html_report(summary, materials, cand, outliers, files, out / "report.html")
    return AnalysisResult(summary=summary, report_path=report, files=files)


def _json(o):
    if isinstance(o, np.generic):
        return o.item()
    return str(o)


def _img(path: Path | None) -> str:
    if not path or not Path(path).exists():
        return ""
    b64 = base64.b64encode(Path(path).read_bytes()).decode()
    return f'<img src="data:image/png;base64,{b64}" style="max-width:100%">'


def _table(df: pd.DataFrame, n: int = 40, floatfmt: str = "{:.3g}") -> str:
    return df.head(n).to_html(index=False, float_format=lambda v: floatfmt.format(v), border=0, classes="t")


def write_html_report(summary: Mapping[str, Any], materials: pd.DataFrame, candidates: pd.DataFrame,
                      outliers: pd.DataFrame, files: Mapping[str, Path], path: str | Path) -> Path:
    """One self-contained HTML file (figures embedded as base64 PNG)."""
    e = html.escape
    g, loc = summary["global_model"], summary["local_model"]

    def model_block(title: str, m: Mapping[str, Any], key: str) -> str:
        if not m.get("fitted"):
            return f"<h3>{e(title)}</h3><p>not fitted: {e(str(m.get('reason')))}</p>"
        tr = m.get("transform")
        scale = f" (on the Box–Cox scale, λ = {tr['lambda']:.3f})" if tr else ""
        return (f"<h3>{e(title)}</h3><p>test R² = <b>{m['test_r2']:.3f}</b>, MAE = {m['test_mae']:.3g}{e(scale)}; "
                f"5-fold CV R² = {m['cv_r2']:.3f}; train R² = {m['train_r2']:.3f}; "
                f"{m['n_train']} train / {m['n_test']} test samples; best parameters {e(str(m['best_params']))}</p>"
                f"{_img(files.get(f'{key}_importances'))}{_img(files.get(f'{key}_parity'))}")

    cols = ["label", "formula", "spacegroup_symbol", "prototype", "r_full", "r_onsite_max", "frequency_shift",
            "anharmonicity", "min_frequency_thz", "dft_harmonic_deviation"]
    top = materials.sort_values("r_onsite_max", ascending=False)[cols]
    n_excluded, excluded_by = len(summary.get("excluded", [])), ", ".join(summary.get("exclude", [])) or "none"
    body = f"""<!DOCTYPE html><html><head><meta charset="utf-8"><title>tdphonon analysis</title>
<style>body{{font-family:sans-serif;max-width:1200px;margin:auto;padding:1em}}
table.t{{border-collapse:collapse;font-size:12px}} table.t td,table.t th{{padding:2px 6px;border-bottom:1px solid #ddd}}
</style></head><body>
<h1>Temperature-dependent phonons: analysis of campaign {e(str(summary.get('campaign')))}</h1>
<p>{summary['n_materials']} materials ({summary['n_sites']} symmetry-distinct sites) at {summary['temperature']:g} K;
model(s) {e(', '.join(summary['models']))} (sha256 {e(', '.join(s[:12] for s in summary['model_sha256']))}…).
{summary['n_outliers']} outliers left out of the fits ({summary['n_dft_references']} materials compared with DFT);
{n_excluded} materials excluded on request ({e(excluded_by)}).
Mean relative frequency shift {summary['mean_frequency_shift']:.3f}; median R_full {summary['median_r_full']:.3g};
median material R_onsite {summary['median_r_onsite_max']:.3g}.</p>
<h2>Trends</h2>
<h3>R_onsite per element</h3>{_img(files.get('element_onsite'))}
<h3>Frequency shift per space group</h3>{_img(files.get('spacegroup_shift'))}
<h3>Distributions</h3>{_img(files.get('distributions'))}
<h3>Structural prototypes</h3>{_img(files.get('prototypes'))}
<h2>Random-forest models</h2>
{model_block(f"Global model: R_full from {summary['n_global_features']} composition + structure features", g,
             'global_model')}
{model_block(f"Local model: R_onsite from {summary['n_site_features']} site features", loc, 'local_model')}
<h2>Screening: sites with R_onsite ≥ {summary['threshold']:g}</h2>
<p>{summary['n_candidates']} sites in {summary['n_candidate_materials']} materials (exported to
<code>candidates/candidates.json</code> for the validation branch).</p>
{_table(candidates, 60)}
<h2>Most anharmonic materials</h2>{_table(top, 30)}
<h2>Outliers</h2>{_table(outliers[['label', 'formula', 'reason']], 60) if len(outliers) else '<p>none</p>'}
<h2>Feature failures</h2>{_table(pd.DataFrame(summary['feature_failures']), 60) if summary['feature_failures']
                          else '<p>none (every featurizer ran on every material and site)</p>'}
<p style="color:#777;font-size:11px">tdphonon analyze, seed {summary['seed']}; tables: materials.csv, sites.csv,
element_onsite.csv, spacegroup_shift.csv, prototypes.csv, candidates.csv; models: global_model/, local_model/.</p>
</body></html>"""
    p = Path(path)
    p.write_text(body)
    return p
