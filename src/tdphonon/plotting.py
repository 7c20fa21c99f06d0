"""Figures: phonon dispersion + DOS, one or several force-constant sets overlaid (0 K and T)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from tdphonon.harmonic import PhononProperties


def _tick_labels(labels: Sequence[str], distances: Sequence[np.ndarray], connections: Sequence[bool]):
    """Tick positions and labels along a segmented band path (merging labels at jumps as 'X|Y')."""
    ticks = [float(distances[0][0])]
    names = [labels[0] if labels else ""]
    li = 1
    for k, d in enumerate(distances):
        ticks.append(float(d[-1]))
        end = labels[li] if li < len(labels) else ""
        li += 1
        if k < len(connections) and not connections[k] and li < len(labels):
            end = f"{end}|{labels[li]}"
            li += 1
        names.append(end)
    return ticks, [n.replace("GAMMA", r"$\Gamma$") for n in names]


def plot_dispersion_dos(
    datasets: Sequence[tuple[str, PhononProperties]],
    path: str | Path,
    title: str | None = None,
) -> Path:
    """Dispersion (left) and total DOS (right) of one or several phonon sets on the same path.

    Parameters
    ----------
    datasets
        ``(legend label, PhononProperties)`` pairs, e.g. ``[("0 K", p0), ("300 K", p300)]``. All must
        share the band path (same primitive cell).
    path
        PNG file to write.
    """
    fig, (ax, axd) = plt.subplots(1, 2, figsize=(10, 4.8), gridspec_kw={"width_ratios": [3.2, 1]}, sharey=True)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for n, (name, props) in enumerate(datasets):
        c = colors[n % len(colors)]
        band = props.band
        for k, (d, f) in enumerate(zip(band.distances, band.frequencies, strict=True)):
            lines = ax.plot(d, f, color=c, lw=1.0)
            if k == 0:
                lines[0].set_label(name)
        axd.plot(props.dos, props.dos_frequencies, color=c, lw=1.0, label=name)
    band0 = datasets[0][1].band
    ticks, names = _tick_labels(band0.labels, band0.distances, band0.connections)
    for t in ticks:
        ax.axvline(t, color="0.7", lw=0.6)
    ax.axhline(0.0, color="0.3", lw=0.6, ls="--")
    ax.set_xticks(ticks)
    ax.set_xticklabels(names)
    ax.set_xlim(ticks[0], ticks[-1])
    ax.set_ylabel("Frequency (THz)  [imaginary shown negative]")
    axd.set_xlabel("DOS (states/THz)")
    axd.set_xlim(left=0)
    if len(datasets) > 1:
        ax.legend(loc="best", fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=130)
    plt.close(fig)
    return out
