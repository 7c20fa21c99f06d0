"""Command-line interface: ``tdphonon harmonic``, ``tdphonon run``, ``tdphonon model``."""

from __future__ import annotations

import json
import os
import sys
import warnings
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from tdphonon.errors import TDPhononError

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Temperature-dependent phonons of crystals with machine-learning potentials.")
console = Console(stderr=True)

#: Default model of the CLI: the project's shipped model when present, else SevenNet-0 (weights in
#: the sevenn wheel; smooth for cubic perovskites, unlike CHGNet's 180° angle kink).
DEFAULT_MODEL = os.environ.get("TDPHONON_MODEL", "default")


def resolve_default_model(model: str) -> str:
    """Map ``default`` to the shipped model if installed, else ``sevennet-0``."""
    if model != "default":
        return model
    from tdphonon.potentials import shipped_model_available

    return "tdphonon-m3gnet" if shipped_model_available() else "sevennet-0"


def _quiet() -> None:
    warnings.filterwarnings("ignore")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import logging

    for name in ("matgl", "sevenn", "chgnet", "phonopy", "torch"):
        logging.getLogger(name).setLevel(logging.ERROR)


def _parse_supercell(text: str | None):
    if not text:
        return None
    vals = [int(x) for x in text.replace(",", " ").split()]
    if len(vals) == 3:
        return tuple(vals)
    if len(vals) == 9:
        return tuple(tuple(vals[i : i + 3]) for i in range(0, 9, 3))
    raise typer.BadParameter("supercell must be 3 or 9 integers, e.g. '2 2 2'")


class _Progress:
    """rich progress bar adapter for the ``progress(step, done, total)`` callbacks."""

    def __init__(self) -> None:
        self.bar = Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                            TimeElapsedColumn(), console=console, transient=False)
        self.tasks: dict[str, int] = {}

    def __enter__(self):
        self.bar.__enter__()
        return self

    def __exit__(self, *exc):
        self.bar.__exit__(*exc)

    def __call__(self, step: str, done: int, total: int) -> None:
        if step not in self.tasks:
            self.tasks[step] = self.bar.add_task(step, total=total)
        self.bar.update(self.tasks[step], completed=done, total=total)


def _fail(exc: Exception) -> None:
    console.print(f"[bold red]error:[/] {exc}")
    raise typer.Exit(code=2)


ModelOpt = Annotated[str, typer.Option("--model", "-m", help="model spec: matgl dir, matgl:<name>, chgnet, "
                                       "sevennet-0, atomate2:<name>, harmonic:<phonopy yaml>; 'default' = "
                                       "shipped model or SevenNet-0")]
OutOpt = Annotated[Path, typer.Option("--out", "-o", help="output folder")]
StructureArg = Annotated[Path, typer.Argument(help="CIF / POSCAR / any pymatgen-readable structure")]
RelaxOpt = Annotated[bool, typer.Option(help="relax with the space group fixed")]
SupercellOpt = Annotated[str | None, typer.Option(help="supercell matrix: '2 2 2' or 9 integers")]
MinLengthOpt = Annotated[float, typer.Option(help="automatic supercell: min width (Å)")]
MaxAtomsOpt = Annotated[int, typer.Option(help="automatic supercell: max atoms")]
DeviceOpt = Annotated[str | None, typer.Option(help="cpu / cuda (default: auto)")]


@app.command()
def harmonic(
    structure: StructureArg,
    model: ModelOpt = DEFAULT_MODEL,
    out: OutOpt = Path("out"),
    relax: RelaxOpt = True,
    supercell: SupercellOpt = None,
    min_length: MinLengthOpt = 10.0,
    max_atoms: MaxAtomsOpt = 260,
    displacement: Annotated[float, typer.Option(help="finite displacement (Å)")] = 0.01,
    fmax: Annotated[float, typer.Option(help="relaxation force criterion (eV/Å)")] = 0.005,
    relax_steps: Annotated[int, typer.Option(help="relaxation step budget")] = 300,
    standardize: Annotated[bool, typer.Option(help="use the conventional standard cell")] = True,
    device: DeviceOpt = None,
) -> None:
    """ML harmonic phonons: writes phonopy.yaml, summary.json and dispersion_dos.png."""
    _quiet()
    from tdphonon.harmonic import HarmonicSettings, harmonic_phonons
    from tdphonon.plotting import plot_dispersion_dos
    from tdphonon.potentials import load_potential

    try:
        settings = HarmonicSettings(relax=relax, supercell_matrix=_parse_supercell(supercell), min_length=min_length,
                                    max_atoms=max_atoms, displacement=displacement, fmax=fmax,
                                    relax_steps=relax_steps, standardize=standardize)
        spec = resolve_default_model(model)
        console.print(f"loading model [bold]{spec}[/]")
        pot = load_potential(spec, device=device)
        with _Progress() as prog:
            res = harmonic_phonons(structure, pot, settings, progress=prog)
        files = res.save(out)
        png = plot_dispersion_dos([("0 K", res.properties)], out / "dispersion_dos.png",
                                  title=f"{res.label} — {pot.identity.name}")
    except TDPhononError as exc:
        _fail(exc)
    im = res.properties.imaginary
    console.print(f"[green]done[/] {res.label}: supercell {len(res.phonon.supercell)} atoms, "
                  f"max frequency {res.properties.commensurate_frequencies.max():.3f} THz, "
                  f"imaginary modes: {f'yes (min {im.min_frequency:.3f} THz)' if im.has_imaginary else 'none'}")
    for k, v in {**files, "plot": png}.items():
        console.print(f"  {k}: {v}")


@app.command()
def run(
    structure: StructureArg,
    temperature: Annotated[list[float], typer.Option("--temperature", "-T", help="K (repeat for several)")] = [300.0],  # noqa: B006
    model: ModelOpt = DEFAULT_MODEL,
    out: OutOpt = Path("out"),
    estimator: Annotated[str, typer.Option(help="hessian | force_fit")] = "force_fit",
    self_consistent: Annotated[bool, typer.Option("--self-consistent/--one-shot",
                                                  help="SCHA iteration with mixing (default: one-shot)")] = False,
    n_configurations: Annotated[int, typer.Option(help="configurations per estimate (even)")] = 32,
    sampling: Annotated[str, typer.Option(help="gaussian | fixed_amplitude")] = "gaussian",
    classical: Annotated[bool, typer.Option(help="classical instead of quantum statistics")] = False,
    policy: Annotated[str, typer.Option(help="imaginary/near-zero modes: abs | floor | fixed_amplitude | exclude")]
    = "abs",
    mixing: Annotated[float, typer.Option(help="self-consistent mixing α")] = 0.5,
    max_iterations: Annotated[int, typer.Option(help="self-consistent iterations at most")] = 20,
    tol: Annotated[float, typer.Option(help="self-consistency tolerance on frequencies (THz)")] = 0.05,
    seed: Annotated[int, typer.Option(help="base random seed")] = 0,
    n_seeds: Annotated[int, typer.Option(help="independent seeds for the error bar (1: block means)")] = 1,
    relax: RelaxOpt = True,
    supercell: SupercellOpt = None,
    min_length: MinLengthOpt = 10.0,
    max_atoms: MaxAtomsOpt = 260,
    displacement: Annotated[float, typer.Option(help="finite displacement for Φ⁰ (Å)")] = 0.01,
    device: DeviceOpt = None,
) -> None:
    """Harmonic + temperature-dependent force constants: phonopy yaml for Φ⁰ and each Φ(T), summary.json,
    dispersion_dos.png (0 K and each T)."""
    _quiet()
    from tdphonon.harmonic import HarmonicSettings
    from tdphonon.pipeline import run_tdph
    from tdphonon.potentials import load_potential
    from tdphonon.renormalize import TDPHSettings
    from tdphonon.sampling import ModeAmplitudePolicy

    try:
        hs = HarmonicSettings(relax=relax, supercell_matrix=_parse_supercell(supercell), min_length=min_length,
                              max_atoms=max_atoms, displacement=displacement)
        ts = TDPHSettings(estimator=estimator, self_consistent=self_consistent, n_configurations=n_configurations,
                          sampling=sampling, quantum=not classical, policy=ModeAmplitudePolicy(kind=policy),
                          mixing=mixing, max_iterations=max_iterations, tol_thz=tol, seed=seed,
                          n_seeds_for_error=n_seeds)
        spec = resolve_default_model(model)
        console.print(f"loading model [bold]{spec}[/]")
        pot = load_potential(spec, device=device)
        with _Progress() as prog:
            res = run_tdph(structure, pot, temperature, hs, ts, progress=prog)
        files = res.save(out)
    except (TDPhononError, ValueError) as exc:
        _fail(exc)
    console.print(f"[green]done[/] {res.label} ({pot.identity.name}, {ts.estimator}, "
                  f"{'self-consistent' if ts.self_consistent else 'one-shot'})")
    for tr in res.temperatures:
        m = tr.renormalization.metrics
        console.print(f"  T = {tr.temperature:g} K: R_full {_num(m.get('r_full'))}, "
                      f"max R_onsite {_num(m.get('r_onsite_max'))}, frequency shift "
                      f"{_num(m.get('frequency_shift'))}, force calls {tr.renormalization.force_calls}, "
                      f"Hessians {tr.renormalization.hessian_calls}")
    for k, v in files.items():
        console.print(f"  {k}: {v}")


def _num(x) -> str:
    return f"{x:.4f}" if isinstance(x, int | float) else str(x)


@app.command("model")
def model_info(
    model: ModelOpt = DEFAULT_MODEL,
    device: DeviceOpt = None,
) -> None:
    """Load a model and print its identity (name, sha256, package version) as JSON."""
    _quiet()
    from tdphonon.potentials import load_potential

    try:
        pot = load_potential(resolve_default_model(model), device=device)
    except TDPhononError as exc:
        _fail(exc)
    print(json.dumps({**pot.identity.to_dict(), "device": pot.device}, indent=2))


def main() -> None:  # pragma: no cover - entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
