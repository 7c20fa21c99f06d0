"""Command-line interface.

Single material: ``tdphonon harmonic``, ``tdphonon run``, ``tdphonon model``.
Campaigns: ``tdphonon submit``, ``status``, ``query``, ``rerun``, ``export`` (FireWorks + MongoDB) and
``tdphonon campaign --local`` (in-process, file-backed store, no server).
"""

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
from tdphonon.potentials import resolve_model_spec

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Temperature-dependent phonons of crystals with machine-learning potentials.")
console = Console(stderr=True)

#: Default model of the CLI: ``default`` = :data:`tdphonon.potentials.DEFAULT_MODEL_SPEC` (SevenNet-0,
#: weights in the sevenn wheel; see there why the shipped tdphonon-m3gnet is not the default yet).
DEFAULT_MODEL = os.environ.get("TDPHONON_MODEL", "default")


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


def _fail(exc: Exception, hint: str | None = None) -> None:
    console.print(f"[bold red]error:[/] {exc}")
    if hint:
        console.print(hint)
    raise typer.Exit(code=2)


def _remedies(reasons: list[str], command: str) -> str | None:
    """What to try when sampled configurations left the model's trusted region (or ``None``).

    ``reasons``: failure messages; the hint is given once if any names an ``UnphysicalForcesError``
    (a force above the model's limit, non-finite values or outlier configurations) or a
    ``SamplingError`` of the displacement cap or the minimum distance. ``command``: ``"run"`` names its
    ``--drop-outliers`` option, the campaign commands the settings-file field.
    """
    forces = any("UnphysicalForcesError" in r or "outlier configuration" in r for r in reasons)
    sampling = any("SamplingError" in r and ("> cap" in r or "minimum distance" in r) for r in reasons)
    if not (forces or sampling):
        return None
    what = ("sampled configurations reached forces or energies the model does not trust" if forces else
            "sampled displacements exceeded the per-atom cap or brought atoms too close")
    options = ["a smaller --supercell",
               "a floor for such modes through --tdph-settings, e.g. 'policy: {kind: floor, floor_thz: 2}'"]
    if forces:
        options.append(("--drop-outliers" if command == "run" else
                        "'drop_outliers: true' in a --tdph-settings file of campaign/submit")
                       + ", which drops and records them (Φ(T) then rests on the other configurations)")
    if sampling:
        options.append("'cap_mode: clip' in --tdph-settings, which shortens such displacements to the cap "
                       "(recorded; the sample is then no longer Gaussian)")
    return (f"  [yellow]hint[/]: {what}, usually through the large thermal amplitudes of soft, near-zero or "
            f"imaginary (|ν|-sampled) harmonic modes. Options: {'; '.join(options)}. Many imaginary modes mean a "
            "structure that is unstable in this model (a saddle point): its Φ(T) from one harmonic start is "
            "then a property of the policy. See docs/methods.md on imaginary and near-zero modes")


ModelOpt = Annotated[str, typer.Option("--model", "-m", help="model spec: matgl dir, matgl:<name>, chgnet, "
                                       "sevennet-0, tdphonon-m3gnet (shipped fine-tuned M3GNet), atomate2:<name>, "
                                       "harmonic:<phonopy yaml>; 'default' = SevenNet-0")]
OutOpt = Annotated[Path, typer.Option("--out", "-o", help="output folder")]
StructureArg = Annotated[Path, typer.Argument(help="CIF / POSCAR / any pymatgen-readable structure")]
RelaxOpt = Annotated[bool, typer.Option(help="relax with the space group fixed")]
SupercellOpt = Annotated[str | None, typer.Option(help="supercell matrix: '2 2 2' or 9 integers")]
MinLengthOpt = Annotated[float, typer.Option(help="automatic supercell: min width (Å)")]
MaxAtomsOpt = Annotated[int, typer.Option(help="automatic supercell: max atoms")]
DeviceOpt = Annotated[str | None, typer.Option(help="cpu / cuda (default: auto)")]
CheckDisplacementOpt = Annotated[float | None, typer.Option(
    help="second finite displacement (Å, e.g. 0.03): recompute Φ⁰ with it and flag step-dependent force "
         "constants (one more force set; see docs/methods.md)")]
DropOutliersOpt = Annotated[bool, typer.Option(
    help="drop configurations with non-finite, over-limit or outlying forces/energies (and their ± partners) "
         "and record them, instead of stopping")]
TDPHSettingsOpt = Annotated[Path | None, typer.Option(
    "--tdph-settings", help="JSON or YAML file of TDPHSettings fields (e.g. reuse_samples, noise_tol, tol_thz, "
                            "policy), applied over the options above")]


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
    check_displacement: CheckDisplacementOpt = None,
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
                                    relax_steps=relax_steps, standardize=standardize,
                                    check_displacement=check_displacement)
        spec = resolve_model_spec(model)
        console.print(f"loading model [bold]{spec}[/]")
        pot = load_potential(spec, device=device)
        with _Progress() as prog:
            res = harmonic_phonons(structure, pot, settings, progress=prog)
        files = res.save(out)
        png = plot_dispersion_dos([("0 K", res.properties)], out / "dispersion_dos.png",
                                  title=f"{res.label} — {pot.identity.name}")
    except (TDPhononError, ValueError) as exc:
        _fail(exc)
    im = res.properties.imaginary
    console.print(f"[green]done[/] {res.label}: supercell {len(res.phonon.supercell)} atoms, "
                  f"max frequency {res.properties.commensurate_frequencies.max():.3f} THz, "
                  f"imaginary modes: {f'yes (min {im.min_frequency:.3f} THz)' if im.has_imaginary else 'none'}")
    _print_step_check(res.step_check.to_dict() if res.step_check else None, im.has_imaginary)
    for k, v in {**files, "plot": png}.items():
        console.print(f"  {k}: {v}")


def _print_step_check(check: dict | None, has_imaginary: bool = False) -> None:
    if not check:
        if has_imaginary:
            console.print("  [yellow]note[/]: harmonic imaginary modes; --check-displacement 0.03 tells whether they "
                          "depend on the finite-displacement step (a model artefact or a shallow double well)")
        return
    if check.get("message"):
        console.print(f"  [yellow]warning[/]: {check['message']}")
    else:
        console.print(f"  step check: frequencies change by at most {check['max_change_thz']:.3f} THz between "
                      f"{check['displacement']:g} and {check['check_displacement']:g} Å "
                      f"(≤ {check['tol_thz']:g} THz: step-independent)")


TemperatureOpt = Annotated[list[float], typer.Option("--temperature", "-T", help="K (repeat for several)")]
EstimatorOpt = Annotated[str, typer.Option(help="hessian | force_fit | quartic_fit (model-based, see docs/methods.md)")]
SelfConsistentOpt = Annotated[bool, typer.Option("--self-consistent/--one-shot",
                                                 help="SCHA iteration with mixing (default: one-shot)")]
NConfOpt = Annotated[int, typer.Option(help="configurations per estimate (even)")]
PolicyOpt = Annotated[str, typer.Option(help="imaginary/near-zero modes: abs | floor | fixed_amplitude | exclude")]
SeedOpt = Annotated[int, typer.Option(help="base random seed")]


def _tdph_settings(**kw):
    from tdphonon.renormalize import TDPHSettings
    from tdphonon.sampling import ModeAmplitudePolicy

    policy = kw.pop("policy", "abs")
    return TDPHSettings(policy=ModeAmplitudePolicy(kind=policy), **kw)


@app.command()
def run(
    structure: StructureArg,
    temperature: TemperatureOpt = [300.0],  # noqa: B006
    model: ModelOpt = DEFAULT_MODEL,
    out: OutOpt = Path("out"),
    estimator: EstimatorOpt = "force_fit",
    self_consistent: SelfConsistentOpt = False,
    n_configurations: NConfOpt = 32,
    sampling: Annotated[str, typer.Option(help="gaussian | fixed_amplitude")] = "gaussian",
    classical: Annotated[bool, typer.Option(help="classical instead of quantum statistics")] = False,
    policy: PolicyOpt = "abs",
    mixing: Annotated[float, typer.Option(help="self-consistent mixing α")] = 0.5,
    adaptive_mixing: Annotated[bool, typer.Option(
        help="self-consistent: halve α after an overshoot (the update reversed and the residual grew; "
             "damps the period-2 oscillation of steep soft modes)")] = True,
    max_iterations: Annotated[int, typer.Option(help="self-consistent iterations at most")] = 20,
    tol: Annotated[float, typer.Option(help="self-consistency tolerance on frequencies (THz)")] = 0.05,
    noise_tol: Annotated[float, typer.Option(
        help="self-consistent: also converged when every frequency changed by less than this many of its "
             "standard errors (batch means; e.g. 3; 0: --tol only)")] = 0.0,
    target_error: Annotated[float, typer.Option(
        help="with --noise-tol and --reuse-samples: stop on noise only once the largest frequency error "
             "is also ≤ this (THz; the pool keeps growing at the fixed point; 0: any error)")] = 0.0,
    seed: SeedOpt = 0,
    n_seeds: Annotated[int, typer.Option(help="independent seeds for the error bar (1: block means)")] = 1,
    reuse_samples: Annotated[bool, typer.Option(
        help="self-consistent: reuse the configurations of earlier iterations, importance-reweighted "
             "(SSCHA-style; less noise for the same force calls)")] = False,
    relax: RelaxOpt = True,
    supercell: SupercellOpt = None,
    min_length: MinLengthOpt = 10.0,
    max_atoms: MaxAtomsOpt = 260,
    displacement: Annotated[float, typer.Option(help="finite displacement for Φ⁰ (Å)")] = 0.01,
    check_displacement: CheckDisplacementOpt = None,
    drop_outliers: DropOutliersOpt = False,
    tdph_settings: TDPHSettingsOpt = None,
    device: DeviceOpt = None,
) -> None:
    """Harmonic + temperature-dependent force constants: phonopy yaml for Φ⁰ and each Φ(T), summary.json,
    dispersion_dos.png (0 K and each T).

    Runs the campaign flow of one material in-process (jobflow run_locally) with a file-backed store in
    OUT/store; a second run with the same structure, model and settings reuses the stored result."""
    _quiet()
    from tdphonon import campaign as cmp
    from tdphonon.flows import TDPhononMaker
    from tdphonon.harmonic import HarmonicSettings
    from tdphonon.structures import load_structure

    try:
        hs = HarmonicSettings(relax=relax, supercell_matrix=_parse_supercell(supercell), min_length=min_length,
                              max_atoms=max_atoms, displacement=displacement, check_displacement=check_displacement)
        ts = _tdph_settings(estimator=estimator, self_consistent=self_consistent, n_configurations=n_configurations,
                            sampling=sampling, quantum=not classical, policy=policy, mixing=mixing,
                            adaptive_mixing=adaptive_mixing, max_iterations=max_iterations, tol_thz=tol,
                            noise_tol=noise_tol, target_error_thz=target_error, seed=seed,
                            n_seeds_for_error=n_seeds, reuse_samples=reuse_samples, drop_outliers=drop_outliers)
        ts = _settings_file(tdph_settings, ts)
        spec = resolve_model_spec(model)
        label = Path(structure).stem
        struct = load_structure(structure, label)
        maker = TDPhononMaker(model=spec, temperatures=tuple(temperature), harmonic_settings=hs.to_dict(),
                              tdph_settings=ts.to_dict(), device=device, gpu_category=None, cpu_category=None)
        console.print(f"loading model [bold]{spec}[/]")
        store = cmp.local_store(out / "store")
        with _Progress() as prog:
            rep = cmp.run_local([cmp.MaterialInput(label, struct, str(structure))], maker, store,
                                progress=lambda lab, k, n: prog(f"{label}: harmonic, sampling, Φ(T), metrics", k, n))
        if rep.failed:
            raise TDPhononError(label, rep.failed[0]["reason"])
        for d in rep.duplicates:
            console.print(f"[yellow]reusing[/] the stored result: {d['reason']} (delete {out / 'store'} to recompute)")
        key = (rep.submitted or rep.duplicates)[0]["key"]
        doc = next(d for d in cmp.query(store, load_arrays=True) if d["dedup_key"] == key)
        files = cmp.write_outputs(doc, out, plot=True)
    except (TDPhononError, ValueError) as exc:
        _fail(exc, _remedies([str(exc)], "run"))
    console.print(f"[green]done[/] {doc['label']} ({doc['model']['name']}, {ts.estimator}, "
                  f"{'self-consistent' if ts.self_consistent else 'one-shot'})")
    harm = doc.get("harmonic") or {}
    _print_step_check(harm.get("step_check"), bool((harm.get("imaginary") or {}).get("has_imaginary")))
    for t in doc["temperatures"]:
        console.print(f"  T = {t['temperature']:g} K: R_full {_num(t['r_full'])}, max R_onsite "
                      f"{_num(t['r_onsite_max'])}, frequency shift {_num(t['frequency_shift'])}, "
                      f"force calls {t['force_calls']}, Hessians {t['hessian_calls']}")
        if drops := t.get("outliers"):
            console.print(f"  [yellow]note[/]: {len(drops)} configuration(s) dropped as outliers at "
                          f"{t['temperature']:g} K (e.g. {drops[0].get('label')}: {drops[0].get('reason')}); "
                          "Φ(T) rests on the others, which no longer sample the Gaussian of Σ(T) in full "
                          "(list: summary.json 'outliers')")
        if t.get("n_clipped_atoms"):
            console.print(f"  [yellow]note[/]: {t['n_clipped_atoms']} atom displacement(s) shortened to the cap at "
                          f"{t['temperature']:g} K (cap_mode clip): the sample is no longer the Gaussian of Σ(T)")
        mr = t.get("mode_report") or {}
        if t.get("imaginary_fixed_point"):
            console.print(f"  [red]warning[/]: converged to a Φ(T) with imaginary modes (lowest "
                          f"{_num(t.get('min_frequency_thz'))} THz): a fixed point of the '{ts.policy.kind}' "
                          "policy, not a SCHA solution")
        elif mr.get("policy_dependent"):
            fin = mr.get("final", {})
            console.print(f"  [yellow]note[/]: {fin.get('n_affected')} mode(s) ({fin.get('n_imaginary')} imaginary) "
                          f"were set by the '{ts.policy.kind}' policy in the final covariance: this result depends "
                          "on that policy (see docs/methods.md)")
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
        pot = load_potential(resolve_model_spec(model), device=device)
    except TDPhononError as exc:
        _fail(exc)
    print(json.dumps({**pot.identity.to_dict(), "device": pot.device}, indent=2))


# --------------------------------------------------------------------------------------------
# campaigns
# --------------------------------------------------------------------------------------------
InputArg = Annotated[Path, typer.Argument(help="folder of CIF/POSCAR/phonopy entries, a CSV/JSON list, or one file")]
CampaignOpt = Annotated[str | None, typer.Option("--campaign", "-c", help="campaign name (tag)")]
LaunchpadOpt = Annotated[Path | None, typer.Option("--launchpad", "-l",
                                                   help="my_launchpad.yaml (default: FireWorks' search)")]
StoreOpt = Annotated[Path | None, typer.Option("--store", "-s",
                                               help="jobflow.yaml with JOB_STORE (default: jobflow's config)")]
LocalOpt = Annotated[Path | None, typer.Option("--local", help="folder of a local (file-backed) campaign store")]
FormatOpt = Annotated[str, typer.Option("--format", "-f", help="table | csv | json")]


def _settings_file(path: Path | None, ts):
    """``ts`` with the fields of a JSON/YAML settings file applied; unknown fields or bad values raise ValueError."""
    import dataclasses

    from monty.serialization import loadfn  # JSON or YAML by extension, as campaign.load_store

    if path is None:
        return ts
    try:
        fields = loadfn(str(path))
    except Exception as exc:  # missing file, JSON or YAML syntax: a user input, reported as such
        raise ValueError(f"--tdph-settings {path}: cannot read it ({exc})") from exc
    if not isinstance(fields, dict):
        raise ValueError(f"--tdph-settings {path}: expected a mapping of TDPHSettings fields")
    try:  # plain Python types: YAML gives ruamel's float/int/map subclasses, which the stores cannot serialise
        fields = json.loads(json.dumps(fields))
    except TypeError as exc:  # e.g. a YAML date: no TDPHSettings field takes one
        raise ValueError(f"--tdph-settings {path}: {exc}") from exc
    unknown = sorted(set(fields) - {f.name for f in dataclasses.fields(ts)})
    if unknown:
        raise ValueError(f"--tdph-settings {path}: unknown TDPHSettings field(s) {unknown}")
    try:
        return dataclasses.replace(ts, **fields)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"--tdph-settings {path}: {exc}") from exc


def _maker(model, temperature, estimator, self_consistent, n_configurations, policy, seed, relax, supercell,
           campaign, device=None, tdph_settings_file=None, check_displacement=None):
    from tdphonon.flows import TDPhononMaker

    ts = _settings_file(tdph_settings_file, _tdph_settings(
        estimator=estimator, self_consistent=self_consistent, n_configurations=n_configurations, policy=policy,
        seed=seed))
    hs = {"relax": relax}
    if supercell:
        hs["supercell_matrix"] = _parse_supercell(supercell)
    if check_displacement is not None:
        hs["check_displacement"] = check_displacement
    return TDPhononMaker(model=resolve_model_spec(model), temperatures=tuple(temperature),
                         harmonic_settings=hs, tdph_settings=ts.to_dict(), campaign=campaign, device=device)


def _inputs_and_maker(inputs, model, temperature, estimator, self_consistent, n_configurations, policy, seed, relax,
                      supercell, campaign, device=None, tdph_settings_file=None, check_displacement=None):
    """Materials of ``inputs`` (unreadable ones reported), the skipped entries and the campaign's maker."""
    from tdphonon import campaign as cmp

    # a bad settings file fails before any input is read
    maker = _maker(model, temperature, estimator, self_consistent, n_configurations, policy, seed, relax, supercell,
                   campaign, device, tdph_settings_file, check_displacement)
    mats, skipped = cmp.read_inputs(inputs)
    _report_inputs(skipped)
    return mats, skipped, maker


def _report_inputs(skipped: list[dict]) -> None:
    for s in skipped:
        console.print(f"[yellow]skipped[/] {s['label']} ({s['source']}): {s['reason']}")


def _print_submit(rep) -> None:
    for d in rep.duplicates:
        console.print(f"[yellow]duplicate[/] {d['label']}: {d['reason']}")
    for d in rep.failed:
        console.print(f"[red]failed[/] {d['label']}: {d['reason']}")
    if hint := _remedies([str(d["reason"]) for d in rep.failed], "campaign"):
        console.print(hint)
    console.print(f"{len(rep.submitted)} done/submitted, {len(rep.duplicates)} duplicates, "
                  f"{len(rep.failed)} failed, {len(rep.skipped)} unreadable inputs")


@app.command()
def submit(
    inputs: InputArg,
    campaign: CampaignOpt = None,
    model: ModelOpt = DEFAULT_MODEL,
    temperature: TemperatureOpt = [300.0],  # noqa: B006
    estimator: EstimatorOpt = "force_fit",
    self_consistent: SelfConsistentOpt = False,
    n_configurations: NConfOpt = 32,
    policy: PolicyOpt = "abs",
    seed: SeedOpt = 0,
    relax: RelaxOpt = True,
    supercell: SupercellOpt = None,
    check_displacement: CheckDisplacementOpt = None,
    tdph_settings: TDPHSettingsOpt = None,
    launchpad: LaunchpadOpt = None,
    store: StoreOpt = None,
) -> None:
    """Add one workflow per material to the launchpad (duplicates are skipped); run with rlaunch."""
    _quiet()
    from tdphonon import campaign as cmp

    try:
        mats, skipped, maker = _inputs_and_maker(inputs, model, temperature, estimator, self_consistent,
                                                 n_configurations, policy, seed, relax, supercell, campaign,
                                                 tdph_settings_file=tdph_settings,
                                                 check_displacement=check_displacement)
        rep = cmp.submit(mats, maker, cmp.load_launchpad(launchpad), cmp.load_store(store))
        rep.skipped = skipped
    except (TDPhononError, ValueError) as exc:
        _fail(exc)
    for d in rep.submitted:
        console.print(f"submitted {d['label']}: fw_ids {d['fw_ids']}")
    _print_submit(rep)


@app.command()
def campaign(
    inputs: InputArg,
    local: Annotated[Path, typer.Option("--local", help="output folder holding the file-backed store")] = Path(
        "campaign"),
    campaign: CampaignOpt = None,
    model: ModelOpt = DEFAULT_MODEL,
    temperature: TemperatureOpt = [300.0],  # noqa: B006
    estimator: EstimatorOpt = "force_fit",
    self_consistent: SelfConsistentOpt = False,
    n_configurations: NConfOpt = 32,
    policy: PolicyOpt = "abs",
    seed: SeedOpt = 0,
    relax: RelaxOpt = True,
    supercell: SupercellOpt = None,
    check_displacement: CheckDisplacementOpt = None,
    tdph_settings: TDPHSettingsOpt = None,
    device: DeviceOpt = None,
) -> None:
    """Run a campaign in this process (jobflow run_locally) into a file store in --local; no server."""
    _quiet()
    from tdphonon import campaign as cmp

    try:
        mats, skipped, maker = _inputs_and_maker(inputs, model, temperature, estimator, self_consistent,
                                                 n_configurations, policy, seed, relax, supercell, campaign, device,
                                                 tdph_settings, check_displacement)
        with _Progress() as prog:
            rep = cmp.run_local(mats, maker, cmp.local_store(local),
                                progress=lambda lab, k, n: prog("materials", k, n))
        rep.skipped = skipped
    except (TDPhononError, ValueError) as exc:
        _fail(exc)
    _print_submit(rep)
    console.print(f"results: tdphonon query --local {local}")


@app.command()
def status(
    campaign: CampaignOpt = None,
    launchpad: LaunchpadOpt = None,
    watch: Annotated[float, typer.Option(help="refresh every N seconds with a progress bar (0: once)")] = 0.0,
    failed: Annotated[bool, typer.Option(help="list FIZZLED fireworks with their reasons")] = False,
) -> None:
    """Materials and fireworks by state, per campaign."""
    _quiet()
    import time

    from tdphonon import campaign as cmp

    lp = cmp.load_launchpad(launchpad)

    def _show():
        st = cmp.status(lp, campaign)
        for name, c in st.items():
            console.print(f"[bold]{name}[/]: {c['n_materials']} materials {c['materials']}; fireworks {c['fireworks']}")
        return st

    st = _show()
    if watch > 0:
        with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                      TimeElapsedColumn(), console=console) as bar:
            tasks = {n: bar.add_task(n, total=c["n_materials"]) for n, c in st.items()}
            while True:
                st = cmp.status(lp, campaign)
                busy = False
                for n, c in st.items():
                    done = c["materials"].get("COMPLETED", 0)
                    bar.update(tasks.setdefault(n, bar.add_task(n)), completed=done, total=c["n_materials"])
                    busy |= any(k in c["materials"] for k in ("READY", "RESERVED", "RUNNING", "WAITING"))
                if not busy:
                    break
                time.sleep(watch)
        _show()
    if failed:
        fails = cmp.failures(lp, campaign)
        for f in fails:
            console.print(f"  fw {f['fw_id']} {f['name']}: {f['reason']}")
        if hint := _remedies([str(f["reason"]) for f in fails], "campaign"):
            console.print(hint)


@app.command()
def query(
    campaign: CampaignOpt = None,
    r_onsite_min: Annotated[float | None, typer.Option(help="max R_onsite at least (screening: 0.15)")] = None,
    r_full_min: Annotated[float | None, typer.Option(help="R_full at least")] = None,
    elements: Annotated[list[str] | None, typer.Option("--elements", "-e", help="contains element (repeat)")] = None,
    spacegroup: Annotated[str | None, typer.Option(help="space-group number or symbol")] = None,
    temperature: Annotated[float | None, typer.Option("--temperature", "-T", help="only this T (K)")] = None,
    model: Annotated[str | None, typer.Option(help="model name or sha256")] = None,
    exclude_imaginary_fixed_points: Annotated[bool, typer.Option(
        help="drop self-consistent results that converged with imaginary modes (not SCHA solutions)")] = False,
    exclude_step_sensitive: Annotated[bool, typer.Option(
        help="drop results whose harmonic step check (--check-displacement) found step-dependent force "
             "constants")] = False,
    exclude_cut_samples: Annotated[bool, typer.Option(
        help="drop results whose sample was cut at any temperature: configurations dropped (drop_outliers) "
             "or displacements clipped to the cap (cap_mode clip)")] = False,
    fmt: FormatOpt = "table",
    store: StoreOpt = None,
    local: LocalOpt = None,
    failed: Annotated[bool, typer.Option(help="list failed materials of a --local campaign")] = False,
) -> None:
    """Query stored results (MongoDB job store or a --local campaign folder)."""
    _quiet()
    import csv

    from tdphonon import campaign as cmp

    st = cmp.local_store(local) if local else cmp.load_store(store)
    if failed:
        print(json.dumps(cmp.local_failures(st, campaign), indent=1))
        return
    docs = cmp.query(st, campaign=campaign, r_onsite_min=r_onsite_min, r_full_min=r_full_min, elements=elements,
                     spacegroup=spacegroup, temperature=temperature, model=model,
                     exclude_imaginary_fixed_points=exclude_imaginary_fixed_points,
                     exclude_step_sensitive=exclude_step_sensitive, exclude_cut_samples=exclude_cut_samples)
    table = cmp.rows(docs, temperature)
    if fmt == "json":
        print(json.dumps(docs, indent=1, default=str))
    elif fmt == "csv":
        w = csv.DictWriter(sys.stdout, fieldnames=list(table[0]) if table else ["label"])
        w.writeheader()
        w.writerows(table)
    else:
        from rich.table import Table

        t = Table(title=f"{len(docs)} materials")
        cols = ["label", "formula", "spacegroup", "temperature", "r_full", "r_onsite_max", "frequency_shift", "model"]
        for c in cols:
            t.add_column(c)
        for r in table:
            t.add_row(*[_num(r[c]) if isinstance(r[c], float) else str(r[c]) for c in cols])
        Console().print(t)


@app.command()
def rerun(
    campaign: CampaignOpt = None,
    fw_id: Annotated[list[int] | None, typer.Option("--fw-id", "-i", help="only these fireworks")] = None,
    lost_after: Annotated[float, typer.Option(help="a RUNNING firework without ping for this long is lost (s)")]
    = 4 * 3600.0,
    dry_run: Annotated[bool, typer.Option(help="only report")] = False,
    launchpad: LaunchpadOpt = None,
) -> None:
    """Rerun FIZZLED fireworks and lost runs (lpad detect_lostruns + rerun_fws), saying why each failed."""
    _quiet()
    from tdphonon import campaign as cmp

    rep = cmp.rerun(cmp.load_launchpad(launchpad), campaign, fw_id, lost_after, dry_run)
    for f in rep["lost"] + rep["fizzled"]:
        console.print(f"{'would rerun' if dry_run else 'rerun'} fw {f['fw_id']} {f['name']}: {f['reason']}")
    console.print(f"{len(rep['lost'])} lost, {len(rep['fizzled'])} fizzled")


@app.command()
def export(
    out: OutOpt = Path("export"),
    campaign: CampaignOpt = None,
    store: StoreOpt = None,
    local: LocalOpt = None,
) -> None:
    """Write phonopy yaml (0 K and each T) and the JSON document of every stored material."""
    _quiet()
    from tdphonon import campaign as cmp

    st = cmp.local_store(local) if local else cmp.load_store(store)
    for d in cmp.export(st, out, campaign=campaign):
        console.print(str(d))


@app.command()
def analyze(
    out: OutOpt = Path("analysis"),
    campaign: CampaignOpt = None,
    store: StoreOpt = None,
    local: LocalOpt = None,
    temperature: Annotated[float | None, typer.Option("--temperature", "-T",
                                                      help="K (default: the most common one)")] = None,
    model: Annotated[str | None, typer.Option(help="only results of this model (name or sha256)")] = None,
    threshold: Annotated[float, typer.Option(help="screening threshold on R_onsite")] = 0.15,
    reference: Annotated[Path | None, typer.Option(
        help="folder of DFT reference sets (ML-vs-DFT > 20 %% outlier filter; matched by formula + space group)")
    ] = None,
    manifest: Annotated[Path | None, typer.Option(help="structure manifest with a 'reference' path per label")] = None,
    boxcox: Annotated[str, typer.Option(help="R_onsite transform of the local model: fit | none | a λ (paper 0.074)")
                      ] = "fit",
    seed: SeedOpt = 0,
    site_split: Annotated[str, typer.Option(help="local-model split: random (paper) | material")] = "random",
    permutation_repeats: Annotated[int, typer.Option(
        min=1, help="shuffles per feature of the permutation importances (fewer: faster, noisier)")] = 10,
    exclude_imaginary_fixed_points: Annotated[bool, typer.Option(
        help="leave out self-consistent results that converged with imaginary modes (not SCHA solutions)")] = False,
    exclude_step_sensitive: Annotated[bool, typer.Option(
        help="leave out results whose harmonic step check found step-dependent force constants")] = False,
    exclude_cut_samples: Annotated[bool, typer.Option(
        help="leave out results whose sample was cut (dropped configurations, clipped displacements)")] = False,
) -> None:
    """Trends, random-forest models, screening and an HTML report of a campaign's results."""
    _quiet()
    from tdphonon import campaign as cmp
    from tdphonon.analysis.report import analyze as run_analysis

    lam: float | str | None = None if boxcox == "none" else boxcox
    if lam not in (None, "fit"):
        try:
            lam = float(lam)
        except ValueError as exc:
            _fail(ValueError(f"--boxcox must be fit, none or a number, not {boxcox!r}: {exc}"))
    try:
        st = cmp.local_store(local) if local else cmp.load_store(store)
        res = run_analysis(out, store=st, campaign=campaign, model=model, temperature=temperature,
                           threshold=threshold, manifest=manifest, reference=reference, boxcox_lambda=lam, seed=seed,
                           site_split=site_split, permutation_repeats=permutation_repeats,
                           exclude=[name for name, on in (("imaginary_fixed_points", exclude_imaginary_fixed_points),
                                                          ("step_sensitive", exclude_step_sensitive),
                                                          ("cut_samples", exclude_cut_samples)) if on])
    except (TDPhononError, ValueError) as exc:
        _fail(exc)
    s = res.summary
    console.print(f"{s['n_materials']} materials, {s['n_sites']} sites at {s['temperature']:g} K; "
                  f"{s['n_outliers']} outliers; {s['n_candidates']} candidate sites (R_onsite >= {threshold:g})")
    for x in s["excluded"]:
        console.print(f"  excluded {x['label']}: {x['reason']}")
    for name in ("global_model", "local_model"):
        m = s[name]
        console.print(f"{name}: " + (f"test R² {m['test_r2']:.3f}, top {', '.join(m['top_features_permutation'][:3])}"
                                     if m.get("fitted") else f"not fitted ({m['reason']})"))
    console.print(f"[green]report[/] {res.report_path}")


@app.command()
def validate(
    inputs: InputArg,
    calculator: Annotated[str, typer.Option(
        help="reference calculator: emt | espresso:{json} | gpaw:{json} | any model spec")] = "emt",
    campaign: CampaignOpt = None,
    temperature: Annotated[list[float] | None, typer.Option("--temperature", "-T",
                                                            help="K (repeat; default 100, 300, 600)")] = None,
    settings: Annotated[str | None, typer.Option(
        help="ValidationSettings overrides: JSON text or a JSON file (shells, n_configurations, kappa_mesh...)")
    ] = None,
    ml_campaign: Annotated[str | None, typer.Option(help="ML campaign whose results are compared")] = None,
    ml_local: Annotated[Path | None, typer.Option(help="local store of that ML campaign")] = None,
    local: Annotated[Path | None, typer.Option(
        "--local", help="run in-process: file store and outputs in this folder (else: submit to the launchpad)")
    ] = None,
    launchpad: LaunchpadOpt = None,
    store: StoreOpt = None,
) -> None:
    """Validation branch (reference harmonic + anharmonic IFCs, SCPH, κ_L) for screening candidates."""
    _quiet()
    from tdphonon import campaign as cmp
    from tdphonon.validation import campaign as vcmp
    from tdphonon.validation.flows import ValidationMaker, settings_from_dict

    try:
        overrides = {}
        if settings:
            p = Path(settings)
            overrides = json.loads(p.read_text() if p.exists() else settings)
        if temperature:
            overrides["temperatures"] = list(temperature)
        settings_from_dict(overrides)
        mats, skipped = cmp.read_inputs(inputs)
        _report_inputs(skipped)
        maker = ValidationMaker(calculator=calculator, settings=overrides, campaign=campaign)
        ml_store = cmp.local_store(ml_local) if ml_local else (cmp.load_store(store) if ml_campaign else None)
        ml_docs = vcmp.ml_documents(ml_store, [m.label for m in mats], ml_campaign) if ml_store is not None else {}
        if local is None:
            rep = vcmp.submit_validation(mats, maker, cmp.load_launchpad(launchpad), ml_docs)
            for d in rep.submitted:
                console.print(f"submitted {d['label']}: fw_ids {d['fw_ids']}")
            return
        st = cmp.local_store(local / "store")
        rep = vcmp.run_validation_local(mats, maker, st, ml_docs)
        for doc in vcmp.validation_results(st, campaign, load_arrays=True):
            if doc["label"] in {d["label"] for d in rep.submitted}:
                vcmp.write_validation_outputs(doc, local / doc["label"], ml_docs.get(doc["label"]))
    except (TDPhononError, ValueError, TypeError) as exc:
        _fail(exc)
    for d in rep.failed:
        console.print(f"[red]failed[/] {d['label']}: {d['reason']}")
    console.print(f"{len(rep.submitted)} validated, {len(rep.failed)} failed; outputs in {local}/<label>/")


# --------------------------------------------------------------------------------------------
# fine-tuning
# --------------------------------------------------------------------------------------------
finetune_app = typer.Typer(no_args_is_help=True, help="Fine-tune a matgl potential on DFT harmonic force constants.")
app.add_typer(finetune_app, name="finetune")
SourcesArg = Annotated[list[Path], typer.Argument(help="DFT sources: files, MDR-style folders or a reference tree")]


@finetune_app.command("dataset")
def finetune_dataset(
    sources: SourcesArg,
    out: OutOpt = Path("finetune/dataset"),
    n_random: Annotated[int, typer.Option(help="random-displacement configurations per compound")] = 10,
    n_modes: Annotated[int, typer.Option(help="mode-weighted configurations per compound (amplitude ∝ 1/|ν| per "
                                               "normal mode, so the soft modes count)")] = 0,
    n_modes_unstable: Annotated[int, typer.Option(help="extra mode-weighted configurations for a compound with an "
                                                        "unstable DFT mode (below -0.5 THz)")] = 0,
    amplitude_min: Annotated[float, typer.Option(help="smallest random displacement (Å)")] = 0.01,
    amplitude_max: Annotated[float, typer.Option(help="largest random displacement (Å)")] = 0.05,
    temperature: Annotated[list[float] | None, typer.Option("--temperature", "-T",
                                                            help="thermal configurations at T (K)")] = None,
    n_thermal: Annotated[int, typer.Option(help="thermal configurations per compound and T")] = 10,
    thermal_labels: Annotated[str, typer.Option(
        help="forces of the thermal configurations: 'harmonic' (F = -Φu) or 'base_anharmonic' (-Φu plus the "
             "base model's anharmonic remainder; needs --base-model)")] = "harmonic",
    base_model: Annotated[str, typer.Option(
        help="base model for --thermal-labels base_anharmonic and for --replay labels")] = "",
    raw: Annotated[bool, typer.Option(help="add the raw DFT random-displacement configurations")] = False,
    replay: Annotated[list[str] | None, typer.Option(
        "--replay", help="structures without DFT data, labelled by --base-model, added to the training split "
                         "against forgetting: 'elements' (elemental crystals of the data's elements) or a "
                         "structure file (repeat)")] = None,
    n_replay: Annotated[int, typer.Option(help="random-displacement configurations per replay structure")] = 10,
    held_out: Annotated[list[str] | None, typer.Option("--held-out", help="label or compound (repeat)")] = None,
    val_fraction: Annotated[float, typer.Option(help="validation fraction of compounds")] = 0.05,
    seed: SeedOpt = 0,
    overwrite: Annotated[bool, typer.Option(help="replace an existing data set")] = False,
) -> None:
    """Force–displacement data (F = −Φu) from DFT force constants, split by compound (extxyz + manifest)."""
    _quiet()
    from tdphonon.finetune.dataset import DatasetSettings
    from tdphonon.finetune.flows import make_dataset

    try:
        st = DatasetSettings(n_random=n_random, n_modes=n_modes, n_modes_unstable=n_modes_unstable,
                             amplitude_min=amplitude_min,
                             amplitude_max=amplitude_max,
                             temperatures=tuple(temperature or ()), n_thermal=n_thermal,
                             thermal_labels=thermal_labels, include_raw=raw,
                             held_out=tuple(held_out or ()), val_fraction=val_fraction, seed=seed,
                             replay=tuple(replay or ()), n_replay=n_replay)
        man = make_dataset(sources, out, st, overwrite=overwrite, base_model=base_model or None)
    except (TDPhononError, ValueError, FileExistsError) as exc:
        _fail(exc)
    for sk in man.get("skipped", []) + man.get("replay", {}).get("skipped", []):
        console.print(f"[yellow]skipped[/] {sk.get('label')}: {sk.get('reason')}")
    counts = ", ".join(f"{k} {v['n_structures']} structures ({len(v['compounds'])} compound(s))"
                       for k, v in man.get("splits", {}).items())
    console.print(f"data set written to {out}: {counts}")


@finetune_app.command("train")
def finetune_train(
    dataset: Annotated[Path, typer.Argument(help="data set folder (tdphonon finetune dataset)")],
    base: Annotated[str, typer.Option(help="base matgl model (directory or matgl:<name>)")] = "",
    out: OutOpt = Path("finetune/model"),
    epochs: Annotated[int, typer.Option(help="maximum epochs")] = 150,
    lr: Annotated[float, typer.Option(help="learning rate")] = 1e-4,
    batch_size: Annotated[int, typer.Option(help="structures per step")] = 4,
    patience: Annotated[int, typer.Option(help="early stopping patience (epochs; 0: off)")] = 20,
    energy_weight: Annotated[float, typer.Option(help="weight of the energy term (0: forces only)")] = 0.0,
    anchor_weight: Annotated[float, typer.Option(
        help="L2-SP weight λ of λ‖θ − θ_base‖², keeps the weights near the base model (0: off)")] = 0.0,
    lr_mult: Annotated[list[str] | None, typer.Option(
        "--lr-mult", help="PREFIX=FACTOR (repeat): learning rate × FACTOR for the parameters whose name starts "
                          "with PREFIX, e.g. three_body_interactions=30 (0 freezes them)")] = None,
    three_body_gate_bias: Annotated[float | None, typer.Option(
        help="set the biases of M3GNet's three-body atom gates to this value before training "
             "(0 opens gates the base model keeps shut)")] = None,
    name: Annotated[str | None, typer.Option(help="name of the fine-tuned model")] = None,
    seed: SeedOpt = 0,
    device: DeviceOpt = None,
    resume: Annotated[bool, typer.Option(help="continue from OUT/checkpoint.pt")] = True,
    select: Annotated[str, typer.Option(
        help="best epoch by the validation 'force_mae' or by the validation compounds' 'phonon_mae' "
             "against DFT (needs --references)")] = "force_mae",
    keep: Annotated[str, typer.Option(
        help="weights written: the 'best' epoch by --select, or the 'last' epoch run (a finished run "
             "resumed with the other choice writes those weights without training again)")] = "best",
    references: Annotated[list[Path] | None, typer.Option(
        "--references", help="the data set's sources (repeat), read for the validation compounds' DFT "
                             "force constants; their frequency MAE is then recorded every epoch")] = None,
) -> None:
    """Fine-tune (force MAE loss, early stopping, checkpoints); writes a matgl model directory with its card."""
    _quiet()
    from tdphonon.finetune.flows import train
    from tdphonon.finetune.recipe import parse_lr_mult
    from tdphonon.finetune.train import FineTuneSettings

    if not base:
        _fail(ValueError("--base is required (e.g. a matgl model directory)"))
    try:
        st = FineTuneSettings(epochs=epochs, lr=lr, batch_size=batch_size, patience=patience,
                              energy_weight=energy_weight, anchor_weight=anchor_weight, seed=seed,
                              device=device, selection=select, keep=keep,
                              lr_multipliers=tuple(parse_lr_mult(t) for t in lr_mult or ()),
                              three_body_gate_bias=three_body_gate_bias)
        with _Progress() as prog:
            def _p(epoch, total, rec):
                ph = (f", val phonons {rec['val_phonon_mae_thz']:.3f} THz" if "val_phonon_mae_thz" in rec else "")
                prog(f"epoch (train {rec['train_mae']:.4f}, val {rec['val_mae']:.4f} eV/Å{ph})", epoch, total)

            card = train(dataset, base, out, st, name=name, progress=_p, resume=resume, references=references)
    except (TDPhononError, ValueError) as exc:
        _fail(exc)
    b, a = card["force_mae_before"], card["force_mae_after"]
    console.print(f"[green]model[/] {out / 'model'} (sha256 {card['sha256'][:16]}…): force MAE train "
                  f"{b['train_mae']:.4f} → {a['train_mae']:.4f}, val {b['val_mae']} → {a['val_mae']} eV/Å")
    if vp := card.get("val_phonon_mae_thz"):
        console.print(f"validation phonon-frequency MAE {vp['before']:.3f} → {vp['after']:.3f} THz "
                      f"(best epoch {card['best_epoch']} by {card['selection']['by']})")


@finetune_app.command("evaluate")
def finetune_evaluate(
    sources: SourcesArg,
    base: Annotated[str, typer.Option(help="base model spec")] = "",
    model: Annotated[str, typer.Option(help="fine-tuned model directory")] = "",
    held_out: Annotated[list[str] | None, typer.Option("--held-out", help="held-out labels (repeat)")] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="JSON result (+ parity PNG beside it)")] = Path(
        "finetune/evaluation.json"),
    device: DeviceOpt = "cpu",
) -> None:
    """Frequency MAE before/after on held-out and training compounds, harmonic-fit residuals, parity plot."""
    _quiet()
    from tdphonon.finetune.flows import evaluate

    models = {k: v for k, v in (("before", base), ("after", model)) if v}
    if not models:
        _fail(ValueError("give --base and/or --model"))
    try:
        res = evaluate(sources, models, held_out or [], out, device=device)
    except (TDPhononError, ValueError) as exc:
        _fail(exc)
    for k, m in res["models"].items():
        console.print(f"{k} ({m['model']['name']}): MAE held-out {m['mae_thz_heldout']}, train {m['mae_thz_train']} "
                      "THz")
    console.print(f"written {out}")


@finetune_app.command("interpolate")
def finetune_interpolate(
    base: Annotated[str, typer.Argument(help="base matgl model (directory or matgl:<name>)")],
    model: Annotated[str, typer.Argument(help="fine-tuned matgl model directory")],
    alpha: Annotated[float, typer.Option(help="θ = θ_base + α (θ_model − θ_base); 0: base, 1: fine-tuned")] = 0.5,
    keep_base: Annotated[list[str] | None, typer.Option(
        "--keep-base", help="state-dict name prefix kept at the base values (repeat)")] = None,
    out: OutOpt = Path("finetune/interpolated"),
    name: Annotated[str | None, typer.Option(help="name of the new model")] = None,
) -> None:
    """Weight-space interpolation (WiSE-FT) of a base and a fine-tuned model; writes a matgl model directory."""
    _quiet()
    from tdphonon.finetune.train import interpolate_weights

    try:
        d = interpolate_weights(base, model, out, alpha, keep_base=tuple(keep_base or ()), name=name)
    except (TDPhononError, ValueError) as exc:
        _fail(exc)
    card = json.loads((d / "model_card.json").read_text())
    console.print(f"[green]model[/] {d} (sha256 {card['sha256'][:16]}…), alpha {alpha:g}")


def main() -> None:  # pragma: no cover - entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
