"""Reference calculators of the validation branch, as :class:`tdphonon.potentials.Potential` objects.

Spec strings (resolved on the worker that runs the job, like model specs):

* ``emt`` — ASE's EMT (Al, Cu, Ag, Au, Ni, Pd, Pt): a cheap, real, anharmonic reference for tests;
* ``espresso:<json>`` — Quantum ESPRESSO ``pw.x`` through ASE. JSON keys: ``pseudo_dir``,
  ``pseudopotentials`` ({element: file}), ``input_data`` (pw.x namelists, e.g. ecutwfc), ``kspacing``
  (Å⁻¹, k-point density) or ``kpts``, ``command`` (default ``pw.x``; e.g. ``mpirun -np 2 pw.x``);
* ``gpaw:<json>`` — GPAW (plane waves). JSON keys: ``ecut`` (eV), ``xc`` (default PBE), ``kspacing``
  (Å⁻¹) or ``kpts``, any other GPAW keyword;
* anything else — a tdphonon model spec (:func:`tdphonon.potentials.load_potential`): an MLIP, a
  fine-tuned model or ``harmonic:<phonopy yaml>``.

Production HPC users run VASP through atomate2's static makers instead (see
``docs/validation.md``); the pure functions only need forces, so any of these plug in.

The identity (sha256) of a DFT calculator is the digest of its canonical settings plus, for QE, the
sha256 of each pseudopotential file, so a result records exactly which physics produced it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
from ase.calculators.calculator import Calculator, all_changes

from tdphonon.errors import ModelLoadError
from tdphonon.potentials import ASEPotential, ModelIdentity, Potential, _pkg_version, load_potential, sha256_file

__all__ = ["reference_potential"]

EMT_ELEMENTS = ("Al", "Cu", "Ag", "Au", "Ni", "Pd", "Pt", "H", "C", "N", "O")


def _digest(settings: dict[str, Any], files: dict[str, str] | None = None) -> str:
    return hashlib.sha256(json.dumps([settings, files or {}], sort_keys=True).encode()).hexdigest()


class _KspacingCalculator(Calculator):
    """ASE calculator whose k-point mesh follows each cell (``kspacing`` Å⁻¹, else ``factory``'s own).

    One inner calculator per k-mesh is built by ``factory(kpts)`` and reused while the mesh stays the
    same; forces, energies and stresses (cell relaxation) all see the mesh of the current cell.
    """

    implemented_properties = ("energy", "free_energy", "forces", "stress")

    def __init__(self, factory, kspacing: float | None) -> None:
        super().__init__()
        self._factory = factory
        self._kspacing = kspacing
        self._inner = None
        self._inner_kpts: tuple | None = None

    def kpts(self, atoms) -> tuple | None:
        if not self._kspacing:
            return None
        rec = np.linalg.norm(atoms.cell.reciprocal(), axis=1) * 2 * np.pi
        return tuple(max(1, int(np.ceil(r / self._kspacing))) for r in rec)

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        k = self.kpts(self.atoms)
        if self._inner is None or k != self._inner_kpts:
            self._inner, self._inner_kpts = self._factory(list(k) if k else None), k
        a = self.atoms.copy()
        a.calc = self._inner
        energy = float(a.get_potential_energy())
        self.results = {"energy": energy, "free_energy": energy, "forces": np.array(a.get_forces())}
        if "stress" in properties:
            self.results["stress"] = np.array(a.get_stress())


def _espresso(cfg: dict[str, Any]) -> Potential:
    try:
        from ase.calculators.espresso import Espresso, EspressoProfile
    except ImportError as exc:  # pragma: no cover - ase always has it
        raise ModelLoadError(None, "ASE's Espresso calculator is unavailable") from exc
    import shutil

    command = cfg.get("command", "pw.x")
    if shutil.which(command.split()[-1]) is None:
        raise ModelLoadError(None, f"Quantum ESPRESSO executable '{command}' not found (apt install quantum-espresso)")
    pseudo_dir = Path(cfg["pseudo_dir"]).expanduser()
    pps = dict(cfg["pseudopotentials"])
    files = {}
    for el, f in pps.items():
        p = pseudo_dir / f
        if not p.is_file():
            raise ModelLoadError(None, f"pseudopotential for {el} not found: {p}")
        files[f] = sha256_file(p)
    input_data = cfg.get("input_data", {})
    settings = {"code": "espresso", "input_data": input_data, "pseudopotentials": pps,
                "kspacing": cfg.get("kspacing"), "kpts": cfg.get("kpts")}
    ident = ModelIdentity(name=f"QE-pw.x {input_data.get('system', {}).get('input_dft', 'pseudo-default')}",
                          kind="dft-espresso", sha256=_digest(settings, files), source=str(pseudo_dir),
                          package="quantum-espresso", package_version="pw.x", files=files)
    profile = EspressoProfile(command=command, pseudo_dir=str(pseudo_dir))
    base = {"control": {"tprnfor": True, "tstress": True}, **input_data}

    def factory(kpts):
        return Espresso(profile=profile, pseudopotentials=pps, input_data=base,
                        kpts=kpts or cfg.get("kpts") or (1, 1, 1), directory=cfg.get("directory", "espresso"))

    return ASEPotential(_KspacingCalculator(factory, cfg.get("kspacing")), ident, "cpu", list(pps))


def _gpaw(cfg: dict[str, Any]) -> Potential:
    try:
        from gpaw import GPAW, PW
    except ImportError as exc:
        raise ModelLoadError(None, "GPAW is not installed (pip install gpaw, or Debian python3-gpaw + gpaw-data)") \
            from exc
    cfg = dict(cfg)
    ecut = float(cfg.pop("ecut", 400.0))
    kspacing = cfg.pop("kspacing", None)
    kpts = cfg.pop("kpts", None)
    xc = cfg.pop("xc", "PBE")
    settings = {"code": "gpaw", "ecut": ecut, "xc": xc, "kspacing": kspacing, "kpts": kpts, **cfg}
    ident = ModelIdentity(name=f"GPAW-PW{ecut:g}-{xc}", kind="dft-gpaw", sha256=_digest(settings), source="gpaw",
                          package="gpaw", package_version=_pkg_version("gpaw"))

    def factory(k):
        return GPAW(mode=PW(ecut), xc=xc, kpts=k or kpts or (1, 1, 1), txt=None, symmetry="off", **cfg)

    return ASEPotential(_KspacingCalculator(factory, kspacing), ident, "cpu")


def reference_potential(spec: str, device: str | None = None) -> Potential:
    """Resolve a reference-calculator spec (see the module docstring)."""
    low = spec.lower()
    if low == "emt":
        from ase.calculators.emt import EMT

        ident = ModelIdentity(name="ASE-EMT", kind="analytic-emt", sha256=_digest({"code": "emt"}), source="ase",
                              package="ase", package_version=_pkg_version("ase"))
        return ASEPotential(EMT(), ident, "cpu", list(EMT_ELEMENTS))
    for prefix, builder in (("espresso:", _espresso), ("gpaw:", _gpaw)):
        if low.startswith(prefix):
            try:
                cfg = json.loads(spec[len(prefix):] or "{}")
            except json.JSONDecodeError as exc:
                raise ModelLoadError(None, f"{prefix[:-1]} settings are not valid JSON: {exc}") from exc
            return builder(cfg)
    return load_potential(spec, device)
