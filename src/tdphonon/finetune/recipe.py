"""Command-line options of the fine-tuning recipe, shared by ``workflows/finetune_recipe.py`` (the shipped
model) and ``benchmarks/finetune.py`` (its held-out accuracy).

One place defines the data and training options and turns them into
:class:`~tdphonon.finetune.dataset.DatasetSettings` and :class:`~tdphonon.finetune.train.FineTuneSettings`,
so that the benchmark measures a recipe with exactly the recipe's settings: the argv recorded in a
model card (``card["recipe"]["argv"]``) can be given to the benchmark as it is, plus ``--heldout``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tdphonon.finetune.train import KEEPS, SELECTIONS

if TYPE_CHECKING:
    from tdphonon.finetune.dataset import DatasetSettings
    from tdphonon.finetune.train import FineTuneSettings

__all__ = ["add_recipe_options", "dataset_settings", "finetune_settings", "parse_lr_mult", "prepare_dataset",
           "split_labels"]


def add_recipe_options(ap: argparse.ArgumentParser, *, epochs: int = 150, patience: int = 20,
                       device: str | None = None) -> None:
    """Add the recipe's data and training options to ``ap`` (the defaults that differ per script are arguments).

    Parameters
    ----------
    ap
        The parser of the script.
    epochs, patience, device
        Defaults of ``--epochs``, ``--patience`` (early stopping; 0: off) and ``--device``.
    """
    d = ap.add_argument_group("data (per DFT set)")
    d.add_argument("--max-atoms", type=int, default=200, help="skip sets whose supercell has more atoms")
    d.add_argument("--n-random", type=int, default=10, help="random-displacement configurations, F = −Φu")
    d.add_argument("--n-modes", type=int, default=0,
                   help="mode-weighted configurations (amplitude ∝ 1/|ν| per normal mode)")
    d.add_argument("--n-modes-unstable", type=int, default=0,
                   help="mode-weighted configurations along the unstable (imaginary) modes only")
    d.add_argument("--thermal-temperatures", type=float, nargs="*", default=[],
                   help="thermal configurations at these T (K), --n-thermal per set and T")
    d.add_argument("--n-thermal", type=int, default=10)
    d.add_argument("--thermal-labels", default="harmonic", choices=["harmonic", "base_anharmonic"],
                   help="forces of the thermal configurations: −Φ_DFT·u, or −Φ_DFT·u plus the base model's "
                        "anharmonic remainder")
    d.add_argument("--max-raw", type=int, default=40, help="raw DFT configurations per set (0: none)")
    d.add_argument("--raw-kinds", nargs="+", default=["random"], help="kinds of raw DFT sets to include")
    d.add_argument("--replay", nargs="*", default=[],
                   help="structures without DFT data labelled by the base model (training split): 'elements' "
                        "(the elemental crystals of the data's elements) and/or structure files")
    d.add_argument("--n-replay", type=int, default=10, help="configurations per replay structure")
    t = ap.add_argument_group("training")
    t.add_argument("--epochs", type=int, default=epochs)
    t.add_argument("--lr", type=float, default=3e-4)
    t.add_argument("--batch-size", type=int, default=4)
    t.add_argument("--anchor-weight", type=float, default=0.0, help="L2-SP pull towards the base weights (0: off)")
    t.add_argument("--lr-mult", nargs="*", default=[], metavar="PREFIX=FACTOR", type=_lr_mult_arg,
                   help="learning rate × FACTOR for the parameters whose name starts with PREFIX "
                        "(e.g. three_body_interactions=30; 0 freezes them)")
    t.add_argument("--three-body-gate-bias", type=float, default=None,
                   help="set M3GNet's three-body gate biases to this value before training (0 opens them)")
    t.add_argument("--patience", type=int, default=patience, help="early stopping patience (epochs; 0: off)")
    t.add_argument("--max-hours", type=float, default=None, help="wall-time budget of the training")
    t.add_argument("--select", default="force_mae", choices=SELECTIONS,
                   help="best epoch by the validation force MAE or by the validation sets' phonon MAE vs DFT")
    t.add_argument("--keep", default="best", choices=KEEPS,
                   help="weights written: the best epoch by --select, or the last epoch run (a finished run, "
                        "same --work and arguments, is re-exported without training)")
    t.add_argument("--device", default=device)


def parse_lr_mult(text: str) -> tuple[str, float]:
    """``PREFIX=FACTOR`` (``--lr-mult``) as a ``(prefix, factor)`` pair of :attr:`FineTuneSettings.lr_multipliers`.

    Raises
    ------
    ValueError
        Not of that form, or the factor is not a number.
    """
    prefix, sep, factor = text.rpartition("=")
    try:
        value = float(factor)
    except ValueError:
        value = None
    if not sep or not prefix or value is None:
        raise ValueError(f"learning-rate multiplier {text!r}: expected PREFIX=FACTOR, e.g. three_body_interactions=30")
    return prefix, value


def _lr_mult_arg(text: str) -> tuple[str, float]:
    try:
        return parse_lr_mult(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def dataset_settings(args: argparse.Namespace, held_out: tuple[str, ...] = ()) -> DatasetSettings:
    """The data settings of parsed recipe options; ``held_out`` compounds or set labels go to the test split."""
    from tdphonon.finetune.dataset import DatasetSettings

    return DatasetSettings(n_random=args.n_random, n_modes=args.n_modes, n_modes_unstable=args.n_modes_unstable,
                           temperatures=tuple(args.thermal_temperatures), n_thermal=args.n_thermal,
                           thermal_labels=args.thermal_labels, include_raw=args.max_raw > 0,
                           raw_kinds=tuple(args.raw_kinds), max_raw_per_set=args.max_raw or None,
                           held_out=tuple(held_out), val_fraction=0.05, seed=0,
                           replay=tuple(args.replay), n_replay=args.n_replay)


def finetune_settings(args: argparse.Namespace) -> FineTuneSettings:
    """The training settings of parsed recipe options."""
    from tdphonon.finetune.train import FineTuneSettings

    return FineTuneSettings(epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, patience=args.patience,
                            anchor_weight=args.anchor_weight, device=args.device, selection=args.select,
                            lr_multipliers=tuple(args.lr_mult), three_body_gate_bias=args.three_body_gate_bias,
                            keep=args.keep,
                            max_seconds=None if args.max_hours is None else 3600.0 * args.max_hours)


def prepare_dataset(entries: list, settings: DatasetSettings, ds_dir: str | Path, base_model: str,
                    device: str | None = None) -> dict[str, Any]:
    """Build and write the data set into ``ds_dir``, or reuse the one there when it was made with these settings.

    Parameters
    ----------
    entries
        The reference entries (and skipped ones, which the manifest reports) of
        :func:`~tdphonon.finetune.sources.read_reference_collection`.
    settings
        The data settings; a data set already in ``ds_dir`` is reused (a resumed run) only when its
        manifest records the same settings, otherwise it is rebuilt.
    ds_dir
        The data-set folder.
    base_model
        The base model, loaded only for base-anharmonic thermal labels and replay structures.
    device
        Device of the base model for those labels (default: cpu).

    Returns
    -------
    dict
        The manifest of the data set (with ``"reused": True`` when it was not rebuilt).
    """
    from tdphonon.finetune.dataset import build_dataset, write_dataset
    from tdphonon.finetune.flows import label_potential

    mpath = Path(ds_dir) / "manifest.json"
    old = json.loads(mpath.read_text()) if mpath.exists() else {}
    if old.get("settings") == json.loads(json.dumps(settings.to_dict())):
        return {**old, "reused": True}
    ds = build_dataset(list(entries), settings, label_potential(settings, base_model, device or "cpu"))
    write_dataset(ds, mpath.parent, overwrite=True)
    return json.loads(mpath.read_text())


def split_labels(manifest: dict[str, Any], split: str) -> list[str]:
    """The set labels of one split (``train``/``val``/``test``) of a data-set manifest (split by compound)."""
    return sorted({lab for c in manifest.get("compounds", {}).values() if c["split"] == split for lab in c["labels"]})
