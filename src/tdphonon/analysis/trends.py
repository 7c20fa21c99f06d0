"""Trend tables and figures (the paper's Section C): R_onsite per element, shift per space group.

Every figure function writes a PNG and returns the table behind it, which the caller saves as CSV,
so each number in a figure can be checked. Figures use matplotlib only (Agg backend).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

__all__ = [
    "CRYSTAL_SYSTEM_COLORS",
    "element_onsite",
    "plot_distributions",
    "plot_element_heatmap",
    "plot_spacegroup_shift",
    "pyplot",
    "spacegroup_shift",
]

CRYSTAL_SYSTEM_COLORS = {
    "triclinic": "#8c564b", "monoclinic": "#e377c2", "orthorhombic": "#2ca02c", "tetragonal": "#ff7f0e",
    "trigonal": "#9467bd", "hexagonal": "#d62728", "cubic": "#1f77b4",
}


def pyplot():
    """matplotlib.pyplot with the non-interactive Agg backend (figures are only written to files)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def element_onsite(sites: pd.DataFrame) -> pd.DataFrame:
    """R_onsite statistics per element over all symmetry-distinct sites (one row per element).

    Columns: n_sites, n_materials, mean, median, max, geometric_mean (of R_onsite; the heat map
    shows the geometric mean on a log scale, robust to the few very anharmonic sites).
    """
    g = sites.groupby("element")
    out = pd.DataFrame({
        "n_sites": g.size(), "n_materials": g["label"].nunique(), "mean": g["r_onsite"].mean(),
        "median": g["r_onsite"].median(), "max": g["r_onsite"].max(),
        "geometric_mean": g["r_onsite"].apply(lambda r: float(np.exp(np.log(np.clip(r, 1e-6, None)).mean()))),
    })
    return out.sort_values("geometric_mean", ascending=False)


def _table_position(symbol: str) -> tuple[float, int]:
    """(row, column) of an element in the standard 18-column table; f-block rows drawn below."""
    from pymatgen.core import Element

    el = Element(symbol)
    if el.is_lanthanoid and el.Z != 71:
        return 8.5, el.Z - 57 + 3
    if el.is_actinoid and el.Z != 103:
        return 9.5, el.Z - 89 + 3
    return float(el.row), int(el.group)


def plot_element_heatmap(table: pd.DataFrame, path: str | Path, column: str = "geometric_mean",
                         title: str = "R_onsite per element") -> Path:
    """Periodic-table heat map of ``table[column]`` (index: element symbols) on a log colour scale."""
    from matplotlib.colors import LogNorm

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(13, 7))
    vals = table[column].clip(lower=1e-4)
    norm = LogNorm(vmin=float(vals.min()), vmax=float(max(vals.max(), vals.min() * 1.01)))
    cmap = plt.get_cmap("viridis")
    from pymatgen.core import Element

    for z in range(1, 104):
        sym = Element.from_Z(z).symbol
        r, c = _table_position(sym)
        has = sym in table.index
        color = cmap(norm(vals[sym])) if has else "#f0f0f0"
        ax.add_patch(plt.Rectangle((c - 0.5, r - 0.5), 0.95, 0.95, color=color, ec="white"))
        txt_color = "white" if has and norm(vals[sym]) < 0.6 else "black"
        ax.text(c - 0.03, r - 0.12, sym, ha="center", va="center", fontsize=8, color=txt_color,
                fontweight="bold" if has else "normal")
        if has:
            ax.text(c - 0.03, r + 0.2, f"{vals[sym]:.2g}", ha="center", va="center", fontsize=6, color=txt_color)
    ax.set_xlim(0.4, 18.6)
    ax.set_ylim(10.1, 0.4)
    ax.set_aspect("equal")
    ax.axis("off")
    sm = plt.cm.ScalarMappable(norm=norm, cmap=cmap)
    fig.colorbar(sm, ax=ax, shrink=0.6, label=f"R_onsite ({column.replace('_', ' ')}, log scale)")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return Path(path)


def spacegroup_shift(materials: pd.DataFrame) -> pd.DataFrame:
    """Mean relative frequency shift per space group (with crystal system, count, std), by number."""
    g = materials.groupby("spacegroup_number")
    out = pd.DataFrame({
        "spacegroup_symbol": g["spacegroup_symbol"].first(), "crystal_system": g["crystal_system"].first(),
        "n_materials": g.size(), "mean_shift": g["frequency_shift"].mean(),
        "std_shift": g["frequency_shift"].std(ddof=0),
    })
    return out.sort_index()


def plot_spacegroup_shift(table: pd.DataFrame, overall_mean: float, path: str | Path) -> Path:
    """Bar chart of the mean shift per space group coloured by crystal system; dashed overall mean."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(max(6.0, 0.35 * len(table) + 2), 4.5))
    x = np.arange(len(table))
    colors = [CRYSTAL_SYSTEM_COLORS.get(cs, "grey") for cs in table["crystal_system"]]
    ax.bar(x, table["mean_shift"], color=colors, yerr=table["std_shift"], capsize=2, error_kw={"lw": 0.6})
    mean_line = ax.axhline(overall_mean, ls="--", color="k", lw=1, label=f"mean over materials = {overall_mean:.3f}")
    ax.set_xticks(x)
    ax.set_xticklabels([f"{s} ({n})" for n, s in zip(table.index, table["spacegroup_symbol"], strict=True)],
                       rotation=90, fontsize=7)
    ax.set_ylabel("relative frequency shift")
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for cs, c in CRYSTAL_SYSTEM_COLORS.items()
               if cs in set(table["crystal_system"])]
    labels = [cs for cs in CRYSTAL_SYSTEM_COLORS if cs in set(table["crystal_system"])]
    ax.legend([*handles, mean_line], [*labels, mean_line.get_label()], fontsize=7, ncol=2)
    ax.set_title("mean frequency shift per space group (bars: std over materials)")
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return Path(path)


def plot_distributions(materials: pd.DataFrame, sites: pd.DataFrame, path: str | Path,
                       threshold: float | None = None) -> Path:
    """Histograms of R_full, material-max R_onsite, site R_onsite (log x) and the frequency shift."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 4, figsize=(15, 3.6))
    series = [(materials["r_full"], "R_full (per material)", True),
              (materials["r_onsite_max"], "R_onsite max (per material)", True),
              (sites["r_onsite"], "R_onsite (per site)", True),
              (materials["frequency_shift"], "relative frequency shift", False)]
    for ax, (vals, name, log) in zip(axes, series, strict=True):
        v = np.asarray(vals, dtype=float)
        v = v[np.isfinite(v)]
        if log:
            v = np.clip(v, 1e-5, None)
            bins = np.logspace(np.log10(v.min()), np.log10(max(v.max(), v.min() * 1.01)), 25) if v.size else 10
            ax.set_xscale("log")
        else:
            bins = 25
        ax.hist(v, bins=bins, color="#4477aa", edgecolor="white")
        if threshold is not None and "R_onsite" in name:
            ax.axvline(threshold, color="crimson", ls="--", lw=1, label=f"screening {threshold:g}")
            ax.legend(fontsize=7)
        ax.set_xlabel(name)
        ax.set_ylabel("count")
        ax.set_title(f"median {np.median(v):.3g}" if v.size else "no data", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return Path(path)
