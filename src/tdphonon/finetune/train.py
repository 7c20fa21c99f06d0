"""Fine-tuning a matgl potential (M3GNet) on force–displacement data.

A plain PyTorch loop over the matgl model (no Lightning needed): forces F = −∂E/∂r by autograd
with ``create_graph`` so the force loss can be back-propagated into the weights; L1 loss on the
force components (the paper's force-MAE objective; an energy term is optional and off by default,
as harmonic data carry no reliable absolute energies); Adam with a cosine learning-rate decay;
validation force MAE every epoch; early stopping with patience; a checkpoint after every epoch
(``checkpoint.pt``: weights, optimiser, scheduler, history, RNG state) from which an interrupted run
resumes exactly. The best weights (the base model included) are saved as a matgl model directory
(``matgl.load_model(dir)`` loads it) with a model card (``model_card.json`` + ``README.md``).

"Best" is what :attr:`FineTuneSettings.selection` says: the lowest validation force MAE (the
paper's choice), or the lowest harmonic phonon-frequency MAE of the validation compounds against
their DFT force constants (``"phonon_mae"``: the ML phonons on each DFT supercell, exactly as
:func:`tdphonon.evaluation.compare_with_reference` scores a model). The two can disagree: on
mode-weighted data the validation force MAE never fell below the base model's while the
validation frequency MAE did (docs/finetune.md), so force selection returned the base model.

Units: eV, Å, eV/Å, THz.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms

from tdphonon.errors import TDPhononError, UnsupportedElementsError
from tdphonon.evaluation import ReferenceSet, compare_with_reference
from tdphonon.potentials import (
    MatglPotential,
    deterministic_torch,
    hardware_info,
    load_potential,
    package_versions,
    sha256_dir,
)

__all__ = ["KEEPS", "SELECTIONS", "FineTuneResult", "FineTuneSettings", "fine_tune", "force_mae", "interpolate_weights",
           "phonon_mae"]

#: What "best epoch" means (:attr:`FineTuneSettings.selection`)
SELECTIONS = ("force_mae", "phonon_mae")
#: Which weights a training run writes (:attr:`FineTuneSettings.keep`)
KEEPS = ("best", "last")


@dataclass(frozen=True)
class FineTuneSettings:
    """Training choices (recorded in the model card).

    Attributes
    ----------
    epochs
        Maximum number of epochs (paper: 150).
    lr
        Initial learning rate of Adam; cosine decay to ``lr * min_lr_ratio`` over ``epochs``.
    batch_size
        Structures per optimisation step.
    patience
        Stop when the selection score (below) has not improved for this many epochs (0: never).
    energy_weight
        Weight of the per-atom energy L1 term (only for structures with an energy); 0 = forces only.
    weight_decay
        Adam weight decay (pulls the weights towards zero).
    anchor_weight
        λ of an L2-SP penalty λ‖θ − θ_base‖² (Li et al. 2018) that pulls the weights towards the base
        model instead, against forgetting what the base model knows about chemistry absent from the
        data (0 = off). The per-epoch history records the squared drift ‖θ − θ_base‖².
    seed
        Shuffling / initialisation seed.
    device
        ``cpu``, ``cuda``... (``None``: CUDA when available).
    max_seconds
        Wall-time budget: stop after the epoch that exceeds it (``None``: no limit). The checkpoint
        is written every epoch, so a batch job that stops here continues with ``resume``; the
        learning-rate schedule still runs over ``epochs``. Not part of the resume check.
    selection
        Which weights are kept and what early stopping watches: ``"force_mae"`` (validation force
        MAE, eV/Å; the training force MAE without validation data) or ``"phonon_mae"`` (mean
        harmonic frequency MAE, THz, of the validation compounds' DFT reference sets, which
        :func:`fine_tune` then needs as ``val_references``).
    keep
        Which weights are written: ``"best"`` (the epoch with the lowest selection score, the base
        model included) or ``"last"`` (the last epoch run: the end of the cosine schedule, for when
        the validation split is too small to select on; the selection score is still recorded and
        still drives early stopping). Not part of the resume check: resuming a finished run with the
        other choice writes the other weights without training again.
    lr_multipliers
        ``(prefix, factor)`` pairs: parameters whose name (in ``model.named_parameters()`` of the
        matgl model, e.g. ``"three_body_interactions"``) starts with ``prefix`` learn with
        ``lr * factor`` (the first matching prefix wins); the cosine decay takes every group from its
        own starting rate to the common floor ``lr * min_lr_ratio``. A factor of 0 freezes them (no
        update, no anchor term). docs/finetune.md has the one measured use: the three-body blocks
        of M3GNet-MP-2021.2.8, which that model has switched off.
    three_body_gate_bias
        Before training, set the bias of the sigmoid atom gates of M3GNet's three-body blocks
        (``three_body_interactions.*.update_network_atom``) to this value (``None``: leave them).
        M3GNet-MP-2021.2.8 keeps these gates nearly shut (biases ≈ −2.2, gates 0.02–0.2), so its
        three-body path changes the bond features by ~0.1 % and a fine-tune cannot move it; 0 opens
        them (gates ≈ 0.5) while the base predictions change by ~1e-4 eV/Å (docs/finetune.md).
    """

    epochs: int = 150
    lr: float = 1e-4
    min_lr_ratio: float = 0.01
    batch_size: int = 4
    patience: int = 20
    energy_weight: float = 0.0
    weight_decay: float = 0.0
    anchor_weight: float = 0.0
    seed: int = 0
    device: str | None = None
    max_seconds: float | None = None
    selection: str = "force_mae"
    keep: str = "best"
    lr_multipliers: tuple[tuple[str, float], ...] = ()
    three_body_gate_bias: float | None = None

    def __post_init__(self) -> None:
        # JSON and checkpoints give lists back; one canonical form keeps resume checks exact
        pairs = tuple((str(p), float(f)) for p, f in self.lr_multipliers)
        for p, f in pairs:
            if not p or not np.isfinite(f) or f < 0:
                raise ValueError(f"learning-rate multiplier {p!r}: {f} (need a non-empty prefix and a "
                                 "finite factor >= 0)")
        object.__setattr__(self, "lr_multipliers", pairs)
        if self.three_body_gate_bias is not None:
            if not np.isfinite(self.three_body_gate_bias):
                raise ValueError(f"three_body_gate_bias must be finite, not {self.three_body_gate_bias}")
            object.__setattr__(self, "three_body_gate_bias", float(self.three_body_gate_bias))
        if self.selection not in SELECTIONS:
            raise ValueError(f"unknown selection {self.selection!r}: choose one of {', '.join(SELECTIONS)}")
        if self.keep not in KEEPS:
            raise ValueError(f"unknown keep {self.keep!r}: choose one of {', '.join(KEEPS)}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def resume_key(self) -> dict[str, Any]:
        """Settings that must match for a checkpoint to be resumed (all but the time budget and ``keep``)."""
        return {k: v for k, v in self.to_dict().items() if k not in ("max_seconds", "keep")}


@dataclass
class FineTuneResult:
    """Outcome of :func:`fine_tune`."""

    model_dir: Path
    card: dict[str, Any]
    history: list[dict[str, float]] = field(default_factory=list)


def _forces_ref(atoms: Atoms) -> np.ndarray:
    f = atoms.arrays.get("forces")
    if f is None and atoms.calc is not None:
        f = atoms.get_forces()
    if f is None:
        raise TDPhononError(atoms.info.get("label"), "training structure without forces")
    return np.asarray(f, dtype=float)


def _energy_ref(atoms: Atoms) -> float | None:
    """Reference energy when the data set says it has one (harmonic data often do not)."""
    if atoms.info.get("energy_available") is False:
        return None
    if atoms.info.get("energy") is not None:
        return float(atoms.info["energy"])
    if atoms.info.get("energy_available") and atoms.calc is not None:
        return float(atoms.get_potential_energy())
    return None


def _check_elements(pot: MatglPotential, structures: Sequence[Atoms], base: str) -> None:
    known = set(pot.elements)
    bad: dict[str, set[str]] = {}
    for a in structures:
        missing = set(a.get_chemical_symbols()) - known
        if missing:
            bad.setdefault(str(a.info.get("label", a.get_chemical_formula())), set()).update(missing)
    if bad:
        desc = "; ".join(f"{k}: {', '.join(sorted(v))}" for k, v in sorted(bad.items())[:10])
        raise UnsupportedElementsError(None, f"the base model {base} does not know these elements ({desc}); "
                                       "remove those compounds or choose another base model")


class _Batches:
    """Graphs built once per structure; batched per step."""

    def __init__(self, pot: MatglPotential, structures: Sequence[Atoms]) -> None:
        torch = pot.torch
        self.pot = pot
        self.parts = [pot._graph_parts(a) for a in structures]
        self.forces = [torch.as_tensor(_forces_ref(a), dtype=torch.float32) for a in structures]
        self.energies = [_energy_ref(a) for a in structures]
        self.natoms = [len(a) for a in structures]

    def __len__(self) -> int:
        return len(self.parts)

    def batch(self, idx: Sequence[int]):
        b, lat, st = self.pot._batch([self.parts[i] for i in idx])
        f = self.pot.torch.cat([self.forces[i] for i in idx]).to(self.pot.device)
        return b, lat, st, f, [self.energies[i] for i in idx], [self.natoms[i] for i in idx]


def _predict(pot: MatglPotential, b, lat, st, create_graph: bool):
    torch = pot.torch
    energies, pos = pot._energy_graph(b, lat, st)
    grad = torch.autograd.grad(energies.sum(), pos, create_graph=create_graph)[0]
    return energies, -grad


def _param_groups(model, multipliers: Sequence[tuple[str, float]]) -> dict[float, list[tuple[str, Any]]]:
    """Trainable named parameters grouped by learning-rate factor (first matching prefix; 1 otherwise)."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    unused = [pre for pre, _ in multipliers if not any(n.startswith(pre) for n, _ in named)]
    if unused:
        raise TDPhononError(None, f"learning-rate multiplier prefixes {unused} match no trainable parameter of the "
                                  "model (names as in model.named_parameters(), e.g. 'three_body_interactions')")
    groups: dict[float, list[tuple[str, Any]]] = {1.0: []}  # the base rate first: the history's "lr"
    for n, p in named:
        factor = next((f for pre, f in multipliers if n.startswith(pre)), 1.0)
        groups.setdefault(factor, []).append((n, p))
    return {f: g for f, g in groups.items() if g}


def _set_three_body_gate_bias(model, value: float, name: str) -> None:
    """Set the biases of the three-body atom gates of an M3GNet model (in place)."""
    import torch

    blocks = getattr(model, "three_body_interactions", None)
    if not blocks:
        raise TDPhononError(None, f"three_body_gate_bias: the base model {name} ({type(model).__name__}) has no "
                                  "M3GNet three-body blocks")
    with torch.no_grad():
        for blk in blocks:
            blk.update_network_atom.layers[0].bias.fill_(float(value))


def _optimizer(model, s: FineTuneSettings):
    """The trainable parameters (the ones an L2-SP anchor covers) and Adam over them, one group per factor.

    A factor-0 group is left out: those parameters are frozen (no update, no anchor term).
    """
    import torch

    groups = _param_groups(model, s.lr_multipliers)
    for _, p in groups.get(0.0, []):
        p.requires_grad_(False)  # no gradient kept for them either
    params = [p for f, g in groups.items() if f > 0 for _, p in g]
    if not params:
        raise TDPhononError(None, f"learning-rate multipliers {list(s.lr_multipliers)} freeze every parameter")
    opt = torch.optim.Adam([{"params": [p for _, p in g], "lr": s.lr * f} for f, g in groups.items() if f > 0],
                           lr=s.lr, weight_decay=s.weight_decay)
    return params, opt


def _drift(params, anchor):
    """Squared distance ‖θ − θ_base‖² of the trainable weights from the base model (a torch scalar)."""
    return sum(((p - a) ** 2).sum() for p, a in zip(params, anchor, strict=True))


def force_mae(pot: MatglPotential, data: _Batches, batch_size: int = 8) -> float:
    """Mean absolute force-component error (eV/Å) of ``pot`` on ``data``."""
    tot, n = 0.0, 0
    for start in range(0, len(data), batch_size):
        b, lat, st, f, _, _ = data.batch(range(start, min(len(data), start + batch_size)))
        _, fp = _predict(pot, b, lat, st, create_graph=False)
        tot += float((fp.detach() - f).abs().sum())
        n += f.numel()
    return tot / max(n, 1)


def phonon_mae(pot: MatglPotential, references: Sequence[ReferenceSet]) -> dict[str, Any]:
    """Harmonic frequency MAE (THz) of ``pot`` on DFT reference sets, their mean the selection score.

    Each set is scored as :func:`tdphonon.evaluation.compare_with_reference` scores a model (ML force
    constants on the DFT supercell, non-acoustic frequencies at its commensurate q-points). A set the
    model cannot score (e.g. unphysical forces of a diverging epoch) makes the mean ``inf`` and is
    reported under ``errors``; it never counts as a good score.

    Returns
    -------
    dict
        ``{"mean": float, "per_set": {name: MAE}, "errors": {name: message}}``.
    """
    per: dict[str, float] = {}
    errors: dict[str, str] = {}
    for r in references:
        try:
            per[r.name] = float(compare_with_reference(r, pot).mae_thz)
        except Exception as exc:  # scored as inf, reported
            errors[r.name] = f"{type(exc).__name__}: {exc}"
    mean = float(np.mean(list(per.values()))) if per and not errors else float("inf")
    return {"mean": mean, "per_set": per, "errors": errors}


@deterministic_torch()  # bitwise-reproducible CPU training (multi-threaded scatter sums in a fixed order)
def fine_tune(
    base_model: str | Path,
    train: Sequence[Atoms],
    val: Sequence[Atoms],
    out_dir: str | Path,
    settings: FineTuneSettings | None = None,
    *,
    data_manifest: dict[str, Any] | None = None,
    name: str | None = None,
    progress: Callable[[int, int, dict[str, float]], None] | None = None,
    resume: bool = True,
    val_references: Sequence[ReferenceSet] | None = None,
) -> FineTuneResult:
    """Fine-tune a matgl model directory (or hub name) on structures with reference forces.

    Parameters
    ----------
    base_model
        matgl model directory (or any spec :func:`tdphonon.potentials.load_potential` maps to matgl).
    train, val
        ASE ``Atoms`` with reference forces (``arrays["forces"]`` or a calculator) and, optionally,
        ``info["energy"]``; ``info["label"]`` names the compound in errors.
    out_dir
        Output folder: ``model/`` (matgl directory), ``checkpoint.pt``, ``model_card.json``,
        ``README.md``, ``history.json``.
    settings
        :class:`FineTuneSettings`.
    data_manifest
        Description of the data (sources, split, counts) copied into the model card.
    progress
        Callback ``(epoch, epochs, {"train_mae": ..., "val_mae": ..., "lr": ...})``.
    resume
        Continue from ``out_dir/checkpoint.pt`` when present (same settings required).
    val_references
        DFT harmonic reference sets of the validation compounds. When given, their frequency MAE
        (:func:`phonon_mae`) is recorded for the base model and every epoch (``val_phonon_mae_thz``
        in the history); ``settings.selection == "phonon_mae"`` selects the epoch by it and needs them.

    Raises
    ------
    UnsupportedElementsError
        A training or validation structure has an element the base model does not know.
    TDPhononError
        Phonon-MAE selection without validation reference sets; a checkpoint of other settings.
    """
    import torch

    s = settings or FineTuneSettings()
    if not train:
        raise TDPhononError(None, "no training structures")
    refs = list(val_references or [])
    if s.selection == "phonon_mae" and not refs:
        raise TDPhononError(None, "selection 'phonon_mae' needs the DFT reference sets of the validation compounds "
                                  "(val_references); a data set without validation compounds can only be "
                                  "selected on the force MAE")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pot = load_potential(str(base_model), device=s.device, cache=False)
    if not isinstance(pot, MatglPotential):
        raise TDPhononError(None, f"{base_model} is not a matgl model: only matgl potentials can be fine-tuned here")
    base_identity = pot.identity.to_dict()
    _check_elements(pot, list(train) + list(val), base_identity["name"])
    if s.three_body_gate_bias is not None:
        _set_three_body_gate_bias(pot.model.model, s.three_body_gate_bias, base_identity["name"])
    torch.manual_seed(s.seed)
    rng = np.random.default_rng(s.seed)
    tr = _Batches(pot, train)
    va = _Batches(pot, val) if val else None
    params, opt = _optimizer(pot.model.model, s)
    anchor = [p.detach().clone() for p in params]
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(s.epochs, 1), eta_min=s.lr * s.min_lr_ratio)
    history: list[dict[str, float]] = []
    start_epoch = 0
    ckpt = out / "checkpoint.pt"
    t_start = time.perf_counter()
    elapsed0 = 0.0  # wall time of earlier invocations (resume): "seconds" and train_seconds add up over them
    ref_names = sorted(r.name for r in refs)

    def _score(rec: dict[str, Any]) -> float:
        if s.selection == "phonon_mae":
            return rec["val_phonon_mae_thz"]
        return rec["val_mae"] if va else rec["train_mae"]

    def _phonons(rec: dict[str, Any]) -> dict[str, Any]:
        if refs:
            ph = phonon_mae(pot, refs)
            rec.update(val_phonon_mae_thz=ph["mean"], val_phonon_mae_per_set=ph["per_set"],
                       **({"val_phonon_errors": ph["errors"]} if ph["errors"] else {}))
        return rec

    pot.model.eval()
    before = _phonons({"train_mae": force_mae(pot, tr), "val_mae": force_mae(pot, va) if va else None})
    # the base model is the candidate to beat (best epoch -1): fine-tuning never returns worse weights
    best = (_score(before), -1)
    best_state = copy.deepcopy(pot.model.state_dict())
    if resume and ckpt.exists():
        c = torch.load(ckpt, map_location=pot.device, weights_only=False)
        if (FineTuneSettings(**c["settings"]).resume_key() != s.resume_key()
                or c["base_sha256"] != base_identity["sha256"]):
            raise TDPhononError(None, f"{ckpt} was written with other settings or another base model; "
                                "use a new output folder or resume=False")
        if s.selection == "phonon_mae" and c.get("val_references") != ref_names:
            raise TDPhononError(None, f"{ckpt} selected epochs on other validation reference sets "
                                      f"({c.get('val_references')} vs {ref_names}); use a new output folder "
                                      "or resume=False")
        pot.model.load_state_dict(c["model"])
        opt.load_state_dict(c["optimizer"])
        sched.load_state_dict(c["scheduler"])
        history, best, best_state, start_epoch = c["history"], tuple(c["best"]), c["best_state"], c["epoch"] + 1
        before = c["before"]
        elapsed0 = float(history[-1]["seconds"]) if history else 0.0
        rng.bit_generator.state = c["rng"]
        torch.set_rng_state(c["torch_rng"])
    stale = len(history) - 1 - best[1] if history else 0
    stopped: str | None = None
    for epoch in range(start_epoch, s.epochs):
        pot.model.train()
        order = rng.permutation(len(tr))
        tot, n = 0.0, 0
        for start in range(0, len(order), s.batch_size):
            b, lat, st, f, e, nat = tr.batch(order[start:start + s.batch_size])
            energies, fp = _predict(pot, b, lat, st, create_graph=True)
            loss = (fp - f).abs().mean()
            if s.energy_weight > 0:
                have = [k for k, x in enumerate(e) if x is not None]
                if have:
                    ep = torch.stack([energies[k] / nat[k] for k in have])
                    er = torch.as_tensor([e[k] / nat[k] for k in have], dtype=ep.dtype, device=ep.device)
                    loss = loss + s.energy_weight * (ep - er).abs().mean()
            if s.anchor_weight > 0:
                loss = loss + s.anchor_weight * _drift(params, anchor)
            opt.zero_grad()
            loss.backward()
            opt.step()
            tot += float((fp.detach() - f).abs().sum())
            n += f.numel()
        sched.step()
        pot.model.eval()
        rec = _phonons({"epoch": epoch, "train_mae": tot / max(n, 1),
                        "val_mae": force_mae(pot, va) if va else float("nan"),
                        "lr": float(opt.param_groups[0]["lr"]), "drift2": float(_drift(params, anchor).detach())})
        rec["seconds"] = elapsed0 + time.perf_counter() - t_start
        history.append(rec)
        score = _score(rec)
        if score < best[0]:
            best = (score, epoch)
            best_state = copy.deepcopy(pot.model.state_dict())
            stale = 0
        else:
            stale += 1
        torch.save({"epoch": epoch, "model": pot.model.state_dict(), "optimizer": opt.state_dict(),
                    "scheduler": sched.state_dict(), "history": history, "best": list(best),
                    "best_state": best_state, "settings": s.to_dict(), "base_sha256": base_identity["sha256"],
                    "before": before, "val_references": ref_names,
                    "rng": rng.bit_generator.state, "torch_rng": torch.get_rng_state()}, ckpt)
        if progress:
            progress(epoch + 1, s.epochs, rec)
        if s.patience and stale >= s.patience:
            stopped = (f"early stopping: no improvement of the {s.selection} selection score in {s.patience} "
                       f"epochs (after epoch {epoch + 1})")
            break
        if s.max_seconds is not None and time.perf_counter() - t_start >= s.max_seconds:
            stopped = f"wall-time budget of {s.max_seconds:.0f} s reached after epoch {epoch + 1} of {s.epochs}"
            break
    if s.keep == "best":
        pot.model.load_state_dict(best_state)
        kept = best[1]
    else:  # the weights in the model now: the last epoch's (trained or resumed), the base without any
        kept = int(history[-1]["epoch"]) if history else -1
    pot.model.eval()
    model_dir = out / "model"
    name = name or f"{base_identity['name']}-finetuned"
    pot.model.save(str(model_dir), metadata={"name": name, "base_model": base_identity["name"],
                                             "base_sha256": base_identity["sha256"]})
    digest, files = sha256_dir(model_dir)
    final = {"train_mae": force_mae(pot, tr), "val_mae": force_mae(pot, va) if va else None}
    card = {
        "name": name, "kind": "matgl", "sha256": digest, "files": files,
        "base_model": base_identity, "settings": s.to_dict(),
        "epochs_run": len(history), "best_epoch": best[1], "kept_epoch": kept, "stopped_early": stopped,
        "selection": {"by": s.selection, "best_score": best[0],
                      "unit": "THz" if s.selection == "phonon_mae" else "eV/Å"},
        "force_mae_before": {k: before[k] for k in ("train_mae", "val_mae")}, "force_mae_after": final,
        "units": {"force_mae": "eV/Å", "phonon_mae": "THz"}, "data": data_manifest or {},
        "train_structures": len(train), "val_structures": len(val),
        **({"val_phonon_mae_thz": {"before": before.get("val_phonon_mae_thz"), "after": phonon_mae(pot, refs)["mean"],
                                   "sets": [r.name for r in refs]}} if refs else {}),
        "train_seconds": elapsed0 + time.perf_counter() - t_start, "hardware": hardware_info(pot.device),
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "packages": package_versions(), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    (out / "history.json").write_text(json.dumps(history, indent=1))
    (model_dir / "model_card.json").write_text(json.dumps(card, indent=1, default=str))
    (out / "model_card.json").write_text(json.dumps(card, indent=1, default=str))
    (model_dir / "README.md").write_text(_card_markdown(card))
    return FineTuneResult(model_dir, card, history)


def interpolate_weights(
    base_model: str | Path,
    finetuned_model: str | Path,
    out_dir: str | Path,
    alpha: float = 0.5,
    *,
    keep_base: Sequence[str] = (),
    name: str | None = None,
) -> Path:
    """Weight-space interpolation between a base and a fine-tuned matgl model (WiSE-FT).

    Every floating-point tensor of the model's state becomes θ = θ_base + α (θ_finetuned − θ_base)
    (Wortsman et al., CVPR 2022: "Robust fine-tuning of zero-shot models"); α = 0 is the base model,
    α = 1 the fine-tuned one, α > 1 extrapolates along the fine-tuning direction. Tensors whose name
    starts with one of ``keep_base`` keep the base values (a module-wise swap, e.g.
    ``("model.embedding",)``): a diagnostic of which part of the network a change of accuracy comes from.

    Parameters
    ----------
    base_model, finetuned_model
        matgl model directories (or specs :func:`tdphonon.potentials.load_potential` maps to matgl) of the
        same architecture.
    out_dir
        Output matgl model directory (``matgl.load_model(out_dir)`` loads it), with ``model_card.json``
        and ``README.md``.
    alpha
        Interpolation weight (finite; any real number).
    keep_base
        Prefixes of state-dict names kept at the base values.
    name
        Model name in the metadata and the card.

    Returns
    -------
    Path
        The model directory.

    Raises
    ------
    TDPhononError
        A model is not a matgl model, the two differ in architecture, or ``alpha`` is not finite.
    """
    if not np.isfinite(alpha):
        raise TDPhononError(None, f"interpolation weight alpha must be finite, got {alpha}")
    pots = []
    for spec in (base_model, finetuned_model):
        pot = load_potential(str(spec), device="cpu", cache=False)
        if not isinstance(pot, MatglPotential):
            raise TDPhononError(None, f"{spec} is not a matgl model: only matgl weights can be interpolated")
        pots.append(pot)
    base, ft = pots
    sb, sf = base.model.state_dict(), ft.model.state_dict()
    mismatch = sorted(set(sb) ^ set(sf)) + sorted(k for k in set(sb) & set(sf) if sb[k].shape != sf[k].shape)
    if mismatch:
        raise TDPhononError(None, f"{base_model} and {finetuned_model} differ in architecture "
                                  f"(first differing tensors: {mismatch[:5]})")
    kept = {k for k in sf if any(k.startswith(p) for p in keep_base)}
    unknown = [p for p in keep_base if not any(k.startswith(p) for k in sf)]
    if unknown:
        raise TDPhononError(None, f"keep_base prefixes match no weights of the model: {unknown}")
    mixed = {k: sb[k] if k in kept else (sb[k] + alpha * (sf[k] - sb[k]) if sf[k].is_floating_point() else sf[k])
             for k in sf}
    ft.model.load_state_dict(mixed)
    out = Path(out_dir)
    name = name or f"{ft.identity.name}-wise{alpha:g}"
    ft.model.save(str(out), metadata={"name": name, "base_model": base.identity.name,
                                      "base_sha256": base.identity.sha256, "alpha": alpha})
    digest, files = sha256_dir(out)
    card = {"name": name, "kind": "matgl", "sha256": digest, "files": files,
            "interpolation": {"formula": "theta = theta_base + alpha * (theta_finetuned - theta_base)",
                              "alpha": alpha, "keep_base": list(keep_base), "n_tensors_kept_base": len(kept),
                              "base_model": base.identity.to_dict(), "finetuned_model": ft.identity.to_dict()},
            "packages": package_versions(), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    (out / "model_card.json").write_text(json.dumps(card, indent=1, default=str))
    (out / "README.md").write_text("\n".join([
        f"# {name}", "",
        f"Weight-space interpolation θ = θ_base + {alpha:g} (θ_finetuned − θ_base) (WiSE-FT) between "
        f"**{base.identity.name}** (sha256 `{base.identity.sha256[:16]}…`) and **{ft.identity.name}** "
        f"(sha256 `{ft.identity.sha256[:16]}…`)"
        + (f"; tensors under {', '.join(keep_base)} kept at the base values." if keep_base else "."),
        "", f"* model sha256: `{digest}`", "",
        "Load with `matgl.load_model(<this folder>)` or `tdphonon ... --model <this folder>`.", ""]))
    return out


_SELECTION_WORDS = {"force_mae": "force MAE", "phonon_mae": "phonon-frequency MAE against DFT"}


def _card_markdown(card: dict[str, Any]) -> str:
    b, a = card["force_mae_before"], card["force_mae_after"]
    data = dict(card.get("data") or {})
    for split, key in (("train", "train_compounds"), ("val", "val_compounds"), ("test", "heldout_compounds")):
        comps = ((data.get("splits") or {}).get(split) or {}).get("compounds")
        if key not in data and comps is not None:
            data[key] = len(comps)

    def _fmt(x):
        return "n/a" if x is None else f"{x:.4f}"

    return "\n".join([
        f"# {card['name']}",
        "",
        f"Fine-tuned from **{card['base_model']['name']}** (sha256 `{card['base_model']['sha256'][:16]}…`) with "
        "tdphonon's force-MAE fine-tuning on force–displacement data generated from DFT harmonic force "
        "constants (F = −Φu).",
        "",
        f"* training structures: {card['train_structures']}, validation structures: {card['val_structures']}",
        f"* compounds: train {data.get('train_compounds', 'n/a')}, validation {data.get('val_compounds', 'n/a')}, "
        f"held out {data.get('heldout_compounds', 'n/a')}",
        f"* epochs run: {card['epochs_run']} (best: {card['best_epoch']}, selected on the validation "
        f"{_SELECTION_WORDS[(card.get('selection') or {}).get('by', 'force_mae')]}"
        + (f"; weights written: the last epoch's, {card['kept_epoch']}"
           if card.get("settings", {}).get("keep") == "last" else "") + "), "
        f"settings: `{json.dumps(card['settings'])}`",
        f"* force MAE (eV/Å) before → after: train {_fmt(b['train_mae'])} → {_fmt(a['train_mae'])}, "
        f"validation {_fmt(b['val_mae'])} → {_fmt(a['val_mae'])}",
        *([f"* validation phonon-frequency MAE (THz, {', '.join(vp['sets'])}) before → after: "
           f"{_fmt(vp['before'])} → {_fmt(vp['after'])}"] if (vp := card.get("val_phonon_mae_thz")) else []),
        f"* model sha256 (files in this folder besides the card): `{card['sha256']}`",
        f"* trained on {card['hardware'].get('device', 'cpu')} in {card['train_seconds']:.0f} s, "
        f"{card['created']}",
        *([f"* stopped before the last epoch: {card['stopped_early']}"] if card.get("stopped_early") else []),
        *_evaluation_markdown(card.get("evaluation")),
        *(["", f"Known limitations: {' '.join(card['known_limitations'])}"] if card.get("known_limitations") else []),
        *(["", f"Licence: {card['licence']}."] if card.get("licence") else []),
        *(["", f"Recipe: `python {card['recipe']['script']} {' '.join(card['recipe'].get('argv', []))}` "
               "(see its docstring)."] if card.get("recipe") else []),
        "",
        "Load with `matgl.load_model(<this folder>)` or `tdphonon ... --model <this folder>`.",
        "",
    ])


def _evaluation_markdown(ev: dict[str, Any] | None) -> list[str]:
    """Harmonic-phonon accuracy table of a card's ``evaluation`` block (written by the recipe)."""
    if not ev:
        return []

    def f(x):
        return "n/a" if x is None else f"{x:.3f}"

    lines = ["", "## Harmonic phonon accuracy (frequency MAE, THz, against the DFT sets)", "",
             f"{ev.get('what', '')}.", "",
             f"* training compounds: base {f(ev.get('mae_thz_base_train'))} → fine-tuned "
             f"{f(ev.get('mae_thz_finetuned_train'))}",
             f"* validation compounds ({', '.join(ev.get('val_compounds', [])) or 'none'}): base "
             f"{f(ev.get('mae_thz_base_val'))} → fine-tuned {f(ev.get('mae_thz_finetuned_val'))}", "",
             "| set | base | fine-tuned |", "|---|---|---|"]
    for lab, row in (ev.get("per_set") or {}).items():
        lines.append(f"| {lab} | {f(row.get('base'))} | {f(row.get('finetuned'))} |")
    return lines
