"""Random-forest models of anharmonicity (the paper's Methods): outlier filter, Box–Cox, fit, importances.

* :func:`filter_outliers` — the paper's filter: materials whose ML harmonic frequencies differ from
  the DFT reference by more than 20 % (where a reference exists) and materials whose renormalised
  frequency shift exceeds 40 % are left out of the fits (reported with the reason, never dropped
  silently).
* :class:`BoxCox` — Box–Cox transform of a positive target (R_onsite is strongly skewed); λ is
  fitted by maximum likelihood on the training targets or fixed (the paper's λ = 0.074,
  :data:`PAPER_BOXCOX_LAMBDA`).
* :func:`fit_random_forest` — scikit-learn pipeline (median imputation, dropping all-NaN columns →
  ``VarianceThreshold`` dropping constant ones → ``RandomForestRegressor``), 90/10 split with a
  fixed seed (grouped by material when ``groups`` is given, so the sites of one material never
  sit on both sides), grid search with k-fold cross-validation on the training part, test R² /
  MAE (on the fitted scale and on the original scale), impurity and permutation importances.
* :func:`save_model` — the fitted pipeline (joblib) with a JSON card: feature list, target,
  transform, split, hyper-parameters, scores, package versions.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tdphonon.analysis.trends import pyplot

__all__ = [
    "DEFAULT_PARAM_GRID",
    "PAPER_BOXCOX_LAMBDA",
    "BoxCox",
    "RFResult",
    "filter_outliers",
    "fit_random_forest",
    "permutation_repeats",
    "plot_importances",
    "plot_parity",
    "save_model",
]

PAPER_BOXCOX_LAMBDA = 0.074
DEFAULT_PARAM_GRID: dict[str, list] = {
    "rf__n_estimators": [200],
    "rf__max_depth": [None, 12],
    "rf__min_samples_leaf": [1, 3],
    "rf__max_features": [1.0, 0.33],
}


def filter_outliers(materials: pd.DataFrame, harmonic_deviation: Mapping[str, float] | None = None,
                    max_harmonic_deviation: float = 0.2, max_shift: float = 0.4) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split ``materials`` (indexed by label) into kept rows and outliers (with a ``reason`` column).

    ``harmonic_deviation``: label → relative deviation of the ML harmonic frequencies from DFT
    (:func:`tdphonon.analysis.reference.harmonic_deviation`); materials without an entry are not
    tested on it. Non-finite metrics are outliers too.
    """
    reasons: dict[str, list[str]] = {}
    dev = dict(harmonic_deviation or {})
    for label, row in materials.iterrows():
        r = []
        if label in dev and dev[label] > max_harmonic_deviation:
            r.append(f"ML harmonic frequencies differ from DFT by {100 * dev[label]:.0f} % "
                     f"(> {100 * max_harmonic_deviation:.0f} %)")
        if row["frequency_shift"] > max_shift:
            r.append(f"frequency shift {100 * row['frequency_shift']:.0f} % (> {100 * max_shift:.0f} %)")
        if not all(np.isfinite([row["r_full"], row["r_onsite_max"], row["frequency_shift"]])):
            r.append("non-finite metric")
        if r:
            reasons[label] = r
    out = materials.loc[list(reasons)].copy()
    out["reason"] = ["; ".join(reasons[i]) for i in out.index]
    return materials.drop(index=list(reasons)), out


@dataclass
class BoxCox:
    """Box–Cox transform y → (y^λ − 1)/λ (log y for λ = 0) of a positive target.

    ``lmbda=None`` fits λ by maximum likelihood (``scipy.stats.boxcox``) in :meth:`fit`.
    ``shift`` is added before transforming (targets may contain exact zeros: R_onsite of a
    harmonic site); default 0 with zeros raising.
    """

    lmbda: float | None = None
    shift: float = 0.0

    def fit(self, y: np.ndarray) -> BoxCox:
        from scipy import stats

        y = np.asarray(y, dtype=float) + self.shift
        if np.any(y <= 0):
            raise ValueError("Box–Cox needs positive targets; set shift > 0")
        if self.lmbda is None:
            self.lmbda = float(stats.boxcox(y)[1])
        return self

    def transform(self, y: np.ndarray) -> np.ndarray:
        from scipy.special import boxcox

        if self.lmbda is None:
            raise ValueError("BoxCox.fit first (or give lmbda)")
        return boxcox(np.asarray(y, dtype=float) + self.shift, self.lmbda)

    def inverse(self, z: np.ndarray) -> np.ndarray:
        from scipy.special import inv_boxcox

        return inv_boxcox(np.asarray(z, dtype=float), self.lmbda) - self.shift

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "box-cox", "lambda": self.lmbda, "shift": self.shift}


@dataclass
class RFResult:
    """A fitted random-forest model and its evaluation (see :func:`fit_random_forest`)."""

    pipeline: Any
    target: str
    features: list[str]
    used_features: list[str]
    transform: BoxCox | None
    best_params: dict[str, Any]
    cv_r2: float
    train_r2: float
    test_r2: float
    test_mae: float
    test_r2_original: float
    test_mae_original: float
    n_train: int
    n_test: int
    seed: int
    test_index: list[Any]
    y_test: np.ndarray
    y_pred: np.ndarray
    impurity_importance: pd.Series
    permutation_importance: pd.Series
    permutation_importance_std: pd.Series
    extra: dict[str, Any] = field(default_factory=dict)
    permutation_repeats: int = 10

    def top_features(self, n: int = 10, kind: str = "permutation") -> list[str]:
        s = self.permutation_importance if kind == "permutation" else self.impurity_importance
        return [str(x) for x in s.sort_values(ascending=False).index[:n]]

    def card(self) -> dict[str, Any]:
        """JSON-serialisable summary (scores, settings, features, importances, versions)."""
        return {
            "target": self.target, "n_features": len(self.features), "features": self.features,
            "used_features": self.used_features,
            "transform": self.transform.to_dict() if self.transform else None,
            "best_params": {k: v for k, v in self.best_params.items()}, "cv_r2": self.cv_r2,
            "train_r2": self.train_r2, "test_r2": self.test_r2, "test_mae": self.test_mae,
            "test_r2_original_scale": self.test_r2_original, "test_mae_original_scale": self.test_mae_original,
            "n_train": self.n_train, "n_test": self.n_test, "seed": self.seed,
            "permutation_repeats": self.permutation_repeats,
            "top10_permutation": self.top_features(10), "top10_impurity": self.top_features(10, "impurity"),
            "impurity_importance": {str(k): float(v) for k, v in self.impurity_importance.items()},
            "permutation_importance": {str(k): float(v) for k, v in self.permutation_importance.items()},
            "packages": _versions("scikit-learn", "matminer", "pymatgen", "numpy", "scipy", "pandas", "joblib",
                                  "tdphonon"),
            **self.extra,
        }


def _versions(*names: str) -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str | None] = {}
    for n in names:
        try:
            out[n] = version(n)
        except PackageNotFoundError:
            out[n] = None
    return out


def permutation_repeats(n) -> int:
    """``n`` as the number of shuffles per feature of a permutation importance (a positive integer)."""
    if int(n) != n or n < 1:
        raise ValueError(f"permutation repeats must be a positive integer, not {n!r}")
    return int(n)


def fit_random_forest(X: pd.DataFrame, y: pd.Series | np.ndarray, target: str = "target",
                      transform: BoxCox | None = None, groups: Sequence[Any] | None = None,
                      test_size: float = 0.1, seed: int = 0, param_grid: Mapping[str, list] | None = None,
                      cv: int = 5, n_jobs: int = 1, n_repeats: int = 10) -> RFResult:
    """Fit and evaluate a random-forest regressor of ``y`` on ``X`` (see the module docstring).

    Parameters
    ----------
    X
        Features (rows: samples); NaN allowed (median-imputed from the training rows).
    y
        Target in original units. With ``transform`` (a :class:`BoxCox`) the forest fits the
        transformed target; λ is fitted on the training rows only when not fixed.
    groups
        Group of each row (e.g. the material of a site): the test split and the CV folds keep
        groups together.
    test_size, seed
        Held-out fraction and the seed of split, forest and permutations (paper: 0.1).
    param_grid
        ``GridSearchCV`` grid over the pipeline (``rf__`` prefixed); default :data:`DEFAULT_PARAM_GRID`.
    cv
        Number of folds (reduced automatically for tiny training sets).
    n_jobs
        Worker processes of the forest.
    n_repeats
        Shuffles per feature of the permutation importance on the test rows (>= 1). Its cost is
        ``n_repeats`` × features × one forest prediction; fewer repeats give noisier importances
        (the spread is reported as ``permutation_importance_std``).
    """
    n_repeats = permutation_repeats(n_repeats)
    from sklearn.ensemble import RandomForestRegressor
    from sklearn.feature_selection import VarianceThreshold
    from sklearn.impute import SimpleImputer
    from sklearn.inspection import permutation_importance
    from sklearn.metrics import mean_absolute_error, r2_score
    from sklearn.model_selection import GridSearchCV, GroupKFold, GroupShuffleSplit, KFold, train_test_split
    from sklearn.pipeline import Pipeline

    X = X.astype(float)
    y = np.asarray(y, dtype=float)
    if len(X) != len(y):
        raise ValueError(f"X has {len(X)} rows, y has {len(y)}")
    ok = np.isfinite(y)
    X, y = X.loc[ok], y[ok]
    g = None if groups is None else np.asarray(groups)[ok]
    idx = np.arange(len(y))
    if g is None:
        tr, te = train_test_split(idx, test_size=test_size, random_state=seed)
    else:
        tr, te = next(GroupShuffleSplit(n_splits=1, test_size=test_size, random_state=seed).split(idx, groups=g))
    if len(tr) < 4 or len(te) < 2:
        raise ValueError(f"too few samples for a {1 - test_size:.0%}/{test_size:.0%} split: {len(y)}")
    if transform is not None:
        transform.fit(y[tr])
        z = transform.transform(y)
    else:
        z = y
    # the imputer drops all-NaN columns, VarianceThreshold the constant ones (both fitted on training rows)
    pipe = Pipeline([("impute", SimpleImputer(strategy="median")), ("drop", VarianceThreshold(0.0)),
                     ("rf", RandomForestRegressor(random_state=seed, n_jobs=n_jobs))])
    n_folds = max(2, min(cv, len(tr) // 3 if g is None else len(set(g[tr]))))
    folds = KFold(n_folds, shuffle=True, random_state=seed) if g is None else GroupKFold(n_folds)
    search = GridSearchCV(pipe, dict(param_grid or DEFAULT_PARAM_GRID), cv=folds, scoring="r2", n_jobs=1,
                          refit=True)
    search.fit(X.iloc[tr], z[tr], **({"groups": g[tr]} if g is not None else {}))
    best = search.best_estimator_
    pred = best.predict(X.iloc[te])
    pred_orig = transform.inverse(pred) if transform is not None else pred
    perm = permutation_importance(best, X.iloc[te], z[te], n_repeats=n_repeats, random_state=seed, scoring="r2")
    used = [str(c) for c in best[:-1].get_feature_names_out()]
    imp = pd.Series(best.named_steps["rf"].feature_importances_, index=used).reindex(X.columns, fill_value=0.0)
    return RFResult(
        pipeline=best, target=target, features=[str(c) for c in X.columns], used_features=[str(c) for c in used],
        transform=transform, best_params=dict(search.best_params_), cv_r2=float(search.best_score_),
        train_r2=float(r2_score(z[tr], best.predict(X.iloc[tr]))), test_r2=float(r2_score(z[te], pred)),
        test_mae=float(mean_absolute_error(z[te], pred)), test_r2_original=float(r2_score(y[te], pred_orig)),
        test_mae_original=float(mean_absolute_error(y[te], pred_orig)), n_train=len(tr), n_test=len(te), seed=seed,
        test_index=[X.index[i] for i in te], y_test=z[te], y_pred=pred,
        impurity_importance=imp.sort_values(ascending=False),
        permutation_importance=pd.Series(perm.importances_mean, index=X.columns).sort_values(ascending=False),
        permutation_importance_std=pd.Series(perm.importances_std, index=X.columns),
        permutation_repeats=n_repeats,
    )


def save_model(result: RFResult, directory: str | Path, extra: Mapping[str, Any] | None = None) -> dict[str, Path]:
    """Write ``model.joblib`` (the pipeline) and ``model_card.json`` (:meth:`RFResult.card` + ``extra``)."""
    import joblib

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    files = {"model": d / "model.joblib", "card": d / "model_card.json"}
    joblib.dump(result.pipeline, files["model"])
    files["card"].write_text(json.dumps({**result.card(), **dict(extra or {})}, indent=1, default=str))
    return files


def plot_importances(result: RFResult, path: str | Path, n: int = 10, title: str = "") -> Path:
    """Top-``n`` impurity and permutation importances side by side."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(12, 0.35 * n + 1.5))
    imp = result.impurity_importance.sort_values(ascending=False).iloc[:n][::-1]
    axes[0].barh(imp.index, imp.values, color="#4477aa")
    axes[0].set_xlabel("impurity (MDI) importance")
    perm = result.permutation_importance.sort_values(ascending=False).iloc[:n][::-1]
    axes[1].barh(perm.index, perm.values, xerr=result.permutation_importance_std[perm.index].values,
                 color="#ee6677")
    axes[1].set_xlabel("permutation importance (Δ R² on the test set)")
    for ax in axes:
        ax.tick_params(axis="y", labelsize=7)
    fig.suptitle(title or f"top-{n} features for {result.target}")
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return Path(path)


def plot_parity(result: RFResult, path: str | Path, title: str = "") -> Path:
    """Predicted vs computed target on the test set (fitted scale)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(4.6, 4.4))
    ax.scatter(result.y_test, result.y_pred, s=14, alpha=0.8)
    lo = float(min(result.y_test.min(), result.y_pred.min()))
    hi = float(max(result.y_test.max(), result.y_pred.max()))
    ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
    scale = f" (Box–Cox λ={result.transform.lmbda:.3f})" if result.transform else ""
    ax.set_xlabel(f"computed {result.target}{scale}")
    ax.set_ylabel(f"predicted {result.target}{scale}")
    ax.set_title(title or f"test R² = {result.test_r2:.2f}, MAE = {result.test_mae:.3g}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return Path(path)
