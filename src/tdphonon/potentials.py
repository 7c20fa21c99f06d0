"""One way to obtain energies, forces and Hessians from a model spec.

A *model spec* is a string (or :class:`ModelSpec`):

========================================  ===================================================
spec                                      model
========================================  ===================================================
``/path/to/dir`` (has ``model.json``)     matgl model directory (``matgl.load_model(dir)``)
``matgl:M3GNet-MP-2021.2.8-PES``          matgl pretrained name (Hugging Face hub, needs network)
``chgnet`` / ``chgnet-0.3.0``             CHGNet; weights ship in the ``chgnet`` wheel
``sevennet-0`` / ``7net-0``               SevenNet-0; weights ship in the ``sevenn`` wheel
``tdphonon-m3gnet``                       the project's shipped model (when present)
``atomate2:<name>``                       any force field known to ``atomate2.forcefields``
``harmonic:/path/phonopy_params.yaml``    analytic harmonic potential from a phonopy FC set
========================================  ===================================================

Every :class:`Potential` carries a :class:`ModelIdentity` (sha256 over the model files, name,
package version) that is recorded in every result, validates its outputs (NaN/inf or absurd
forces raise :class:`~tdphonon.errors.UnphysicalForcesError` naming the structure) and counts its
force calls. :func:`load_potential` caches one instance per (spec, device) per process, so a
worker loads each model exactly once.

Units: eV, Å; forces eV/Å; Hessians eV/Å².
"""

from __future__ import annotations

import abc
import contextlib
import functools
import hashlib
import json
import os
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms

from tdphonon.errors import ModelLoadError, UnphysicalForcesError, UnsupportedElementsError

#: Forces above this magnitude (eV/Å) are treated as a failure of the model (extrapolation).
DEFAULT_MAX_FORCE = 50.0

#: The project's shipped model directory (present once the fine-tuned model ships).
SHIPPED_MODEL_DIR = Path(__file__).parent / "data" / "models" / "tdphonon-m3gnet"

_CHGNET_ALIASES = {"chgnet", "chgnet-0.3.0", "chgnet_0.3.0", "chgnet-0.3"}
_SEVENNET_ALIASES = {"sevennet", "sevennet-0", "7net-0", "sevennet_0", "sevennet0"}


# --------------------------------------------------------------------------------------------
# reproducibility
# --------------------------------------------------------------------------------------------
@contextlib.contextmanager
def deterministic_torch() -> Iterator[None]:
    """Torch's deterministic algorithms inside the block (the previous mode is restored afterwards).

    Without them, multi-threaded CPU reductions of some models add in an order that differs from
    process to process: SevenNet-0 forces on a 135-atom SrTiO3 cell differed in the last bits between
    two runs, and fine-tuning amplifies such differences (docs/finetune.md). With them, model
    evaluation and CPU training are bitwise reproducible, at no measurable cost on the CPU
    (``tests/test_potentials.py``, ``tests/test_finetune_train.py``). ``warn_only``: an op without a
    deterministic implementation (some CUDA kernels) warns instead of failing; CUDA also needs
    ``CUBLAS_WORKSPACE_CONFIG``, set here when absent (effective before the process first uses cuBLAS).
    """
    try:
        import torch
    except ImportError:  # analytic potentials only
        yield
        return
    before = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])


# --------------------------------------------------------------------------------------------
# identity
# --------------------------------------------------------------------------------------------
def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Return the hex sha256 of one file."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_files(paths: Sequence[str | os.PathLike], root: str | os.PathLike | None = None) -> tuple[str, dict]:
    """Combined sha256 over several files (names relative to ``root`` and contents).

    Returns
    -------
    digest, per_file
        The combined digest (order independent: files are sorted by name) and the per-file digests.
    """
    per_file: dict[str, str] = {}
    for p in paths:
        name = str(Path(p).relative_to(root)) if root is not None else Path(p).name
        per_file[name] = sha256_file(p)
    h = hashlib.sha256()
    for name in sorted(per_file):
        h.update(name.encode())
        h.update(per_file[name].encode())
    return h.hexdigest(), per_file


#: documentation files of a model directory, left out of its sha256 (a card can then state the digest)
MODEL_DOC_FILES = {"README.md", "model_card.json", "LICENSE-matgl"}


def sha256_dir(path: str | os.PathLike) -> tuple[str, dict]:
    """sha256 over the regular files of a model directory (recursively, sorted by relative name).

    The model card files (:data:`MODEL_DOC_FILES`) at the top level are not part of the digest.
    """
    root = Path(path)
    files = sorted(p for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts
                   and not (p.parent == root and p.name in MODEL_DOC_FILES))
    if not files:
        raise ModelLoadError(None, f"model directory {root} contains no files")
    return sha256_files(files, root)


@dataclass(frozen=True)
class ModelIdentity:
    """Who computed a result: recorded in every output.

    Attributes
    ----------
    name
        Canonical model name (e.g. ``CHGNet-0.3.0``).
    kind
        Backend: ``matgl``, ``chgnet``, ``sevennet``, ``atomate2``, ``analytic``.
    sha256
        Digest over the model's weight / definition files (or the defining arrays).
    source
        Path or hub name the model came from.
    package
        Python package providing the model and its version.
    files
        Per-file sha256 of the model files.
    """

    name: str
    kind: str
    sha256: str
    source: str
    package: str
    package_version: str
    files: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def _pkg_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not-installed"


def package_versions() -> dict[str, str]:
    """Versions of the packages that determine tdphonon's results (for provenance)."""
    import platform

    names = ["tdphonon", "numpy", "scipy", "torch", "phonopy", "symfc", "spglib", "pymatgen", "ase",
             "matgl", "chgnet", "sevenn", "jobflow", "atomate2", "fireworks"]
    out = {n: _pkg_version(n) for n in names}
    out["python"] = platform.python_version()
    return out


def hardware_info(device: str | None = None) -> dict[str, Any]:
    """Host, CPU count and accelerator in use (for provenance)."""
    import platform

    info: dict[str, Any] = {
        "hostname": socket.gethostname(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "device": device,
    }
    try:
        import torch

        info["torch_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
            info["cuda"] = torch.version.cuda
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    return info


def default_device() -> str:
    """``cuda`` when a CUDA device is visible, else ``cpu`` (override with ``TDPHONON_DEVICE``)."""
    env = os.environ.get("TDPHONON_DEVICE")
    if env:
        return env
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


# --------------------------------------------------------------------------------------------
# the Potential interface
# --------------------------------------------------------------------------------------------
def _label(labels: Sequence[str] | None, i: int, atoms: Atoms) -> str:
    if labels is not None:
        return str(labels[i])
    return atoms.info.get("label") or atoms.get_chemical_formula()


def validate_forces(
    forces: np.ndarray,
    energy: float | None,
    label: str,
    max_force: float = DEFAULT_MAX_FORCE,
) -> None:
    """Raise :class:`UnphysicalForcesError` for NaN/inf or absurdly large forces/energies."""
    if energy is not None and not np.isfinite(energy):
        raise UnphysicalForcesError(label, f"model returned a non-finite energy ({energy})")
    if not np.all(np.isfinite(forces)):
        bad = np.argwhere(~np.isfinite(forces))[:, 0]
        raise UnphysicalForcesError(label, f"model returned NaN/inf forces on atoms {sorted(set(bad.tolist()))}")
    fmax = float(np.max(np.linalg.norm(forces, axis=-1))) if forces.size else 0.0
    if fmax > max_force:
        iat = int(np.argmax(np.linalg.norm(forces, axis=-1)))
        raise UnphysicalForcesError(
            label,
            f"force of {fmax:.1f} eV/Å on atom {iat} exceeds the limit of {max_force:.1f} eV/Å "
            "(MLIP extrapolation or atoms too close)",
        )


class Potential(abc.ABC):
    """Energies, forces and Hessians of periodic structures from one model.

    Subclasses implement :meth:`_compute` (raw energies and forces for a list of structures, batched
    where the backend allows). Everything else (validation, counting, Hessians by batched central
    differences) is shared.

    Attributes
    ----------
    identity : ModelIdentity
    device : str
    elements : frozenset[str] | None
        Elements the model covers (``None`` when unknown / unrestricted).
    force_calls : int
        Number of structures whose forces were evaluated (one per configuration).
    max_force : float
        Forces above this (eV/Å) raise :class:`UnphysicalForcesError`.
    """

    #: structures per batched call
    batch_size: int = 32
    #: atoms per batched call (None: no limit); memory grows with the atoms of a batch, not the structures
    max_batch_atoms: int | None = None

    def __init__(self, identity: ModelIdentity, device: str = "cpu", elements: Sequence[str] | None = None,
                 max_force: float = DEFAULT_MAX_FORCE) -> None:
        self.identity = identity
        self.device = device
        self.elements = frozenset(elements) if elements is not None else None
        self.force_calls = 0
        self.hessian_calls = 0
        self.max_force = max_force
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.identity.name!r}, device={self.device!r})"

    # -- to implement ------------------------------------------------------------------------
    @abc.abstractmethod
    def _compute(self, atoms_list: Sequence[Atoms]) -> tuple[np.ndarray, list[np.ndarray]]:
        """Raw energies (n,) and forces (list of (N_i, 3)) for ``atoms_list``."""

    @abc.abstractmethod
    def ase_calculator(self):
        """An ASE calculator backed by the same (already loaded) model."""

    # -- shared ------------------------------------------------------------------------------
    def check_elements(self, symbols: Sequence[str], label: str | None = None) -> None:
        """Raise :class:`UnsupportedElementsError` if the model does not cover ``symbols``."""
        if self.elements is None:
            return
        missing = sorted(set(symbols) - self.elements)
        if missing:
            raise UnsupportedElementsError(
                label, f"elements {missing} are not covered by model {self.identity.name}"
            )

    def energies_and_forces(
        self, atoms_list: Sequence[Atoms], labels: Sequence[str] | None = None, validate: bool = True
    ) -> tuple[np.ndarray, list[np.ndarray]]:
        """Energies (eV) and forces (eV/Å) of several structures, batched where possible.

        Raises
        ------
        UnphysicalForcesError
            If any structure gets NaN/inf or absurd forces; the message names that structure.
        """
        atoms_list = list(atoms_list)
        if not atoms_list:
            return np.zeros(0), []
        for i, a in enumerate(atoms_list):
            self.check_elements(a.get_chemical_symbols(), _label(labels, i, a))
        energies: list[float] = []
        forces: list[np.ndarray] = []
        with self._lock, deterministic_torch():
            for chunk in batches(atoms_list, self.batch_size, self.max_batch_atoms):
                e, f = self._compute(chunk)
                energies.extend(np.asarray(e, dtype=float).tolist())
                forces.extend(np.asarray(x, dtype=float).reshape(len(a), 3) for x, a in zip(f, chunk, strict=True))
            self.force_calls += len(atoms_list)
        if validate:
            for i, (e, f) in enumerate(zip(energies, forces, strict=True)):
                validate_forces(f, e, _label(labels, i, atoms_list[i]), self.max_force)
        return np.asarray(energies), forces

    def forces(self, atoms_list: Sequence[Atoms], labels: Sequence[str] | None = None) -> np.ndarray:
        """Forces of equally sized structures as one array of shape (n, N, 3) in eV/Å."""
        _, f = self.energies_and_forces(atoms_list, labels)
        return np.stack(f) if f else np.zeros((0, 0, 3))

    def hessian(self, atoms: Atoms, delta: float = 0.01, label: str | None = None) -> np.ndarray:
        """Hessian (3N, 3N) in eV/Å² by batched central differences of the forces.

        ``H[3i+a, 3j+b] = ∂²E/∂u_ia ∂u_jb`` (symmetrised). Subclasses with autograd override.
        Costs 6N force calls, done in batches.
        """
        return self.hessians([atoms], delta=delta, labels=[label] if label else None)[0]

    def hessians(self, atoms_list: Sequence[Atoms], delta: float = 0.01,
                 labels: Sequence[str] | None = None) -> np.ndarray:
        """Hessians of equally sized structures (n, 3N, 3N) by batched central differences."""
        return fd_hessians(self, atoms_list, delta=delta, labels=labels)


def fd_hessians(potential: Potential, atoms_list: Sequence[Atoms], delta: float = 0.01,
                labels: Sequence[str] | None = None) -> np.ndarray:
    """Central-difference Hessians for any :class:`Potential` (batched force calls)."""
    potential.hessian_calls += len(atoms_list)
    out = []
    for k, atoms in enumerate(atoms_list):
        n = len(atoms)
        lab = _label(labels, k, atoms)
        displaced = []
        for i in range(n):
            for a in range(3):
                for sign in (1.0, -1.0):
                    d = atoms.copy()
                    pos = d.get_positions()
                    pos[i, a] += sign * delta
                    d.set_positions(pos)
                    displaced.append(d)
        f = potential.forces(displaced, labels=[f"{lab} (Hessian FD {j})" for j in range(len(displaced))])
        f = f.reshape(n * 3, 2, n * 3)
        h = -(f[:, 0, :] - f[:, 1, :]) / (2 * delta)
        out.append(0.5 * (h + h.T))
    return np.asarray(out)


def batches(atoms_list: Sequence[Atoms], max_structures: int, max_atoms: int | None = None) -> list[list[Atoms]]:
    """Consecutive chunks of ``atoms_list`` with at most ``max_structures`` structures and, when given, at most
    ``max_atoms`` atoms in all (a structure larger than ``max_atoms`` forms a chunk of its own)."""
    out: list[list[Atoms]] = []
    cur: list[Atoms] = []
    n_atoms = 0
    for a in atoms_list:
        if cur and (len(cur) >= max_structures or (max_atoms is not None and n_atoms + len(a) > max_atoms)):
            out.append(cur)
            cur, n_atoms = [], 0
        cur.append(a)
        n_atoms += len(a)
    if cur:
        out.append(cur)
    return out


class ASEPotential(Potential):
    """Any ASE calculator, evaluated structure by structure."""

    def __init__(self, calculator, identity: ModelIdentity, device: str = "cpu",
                 elements: Sequence[str] | None = None, max_force: float = DEFAULT_MAX_FORCE) -> None:
        super().__init__(identity, device, elements, max_force)
        self._calc = calculator

    def ase_calculator(self):
        return self._calc

    def _compute(self, atoms_list):
        energies, forces = [], []
        for a in atoms_list:
            b = a.copy()
            b.calc = self._calc
            forces.append(np.array(b.get_forces()))
            energies.append(float(b.get_potential_energy()))
        return np.asarray(energies), forces


class MatglPotential(Potential):
    """A matgl potential (M3GNet, CHGNet-matgl, TensorNet...) with batched graph evaluation."""

    batch_size = 16

    def __init__(self, model, identity: ModelIdentity, device: str = "cpu",
                 max_force: float = DEFAULT_MAX_FORCE) -> None:
        import torch
        from matgl.ext.ase import Atoms2Graph

        self.model = model.to(device)
        self.model.eval()
        self.torch = torch
        inner = model.model
        super().__init__(identity, device, list(inner.element_types), max_force)
        self._converter = Atoms2Graph(inner.element_types, float(inner.cutoff))
        self._calc = None

    def ase_calculator(self):
        if self._calc is None:
            from matgl.ext.ase import PESCalculator

            self._calc = PESCalculator(self.model, stress_unit="eV/A3")
        return self._calc

    def _graph_parts(self, atoms):
        """(graph, lattice (3, 3), state attributes) of one structure, on the CPU."""
        g, lat, st = self._converter.get_graph(atoms)
        return (g, self.torch.as_tensor(lat, dtype=self.torch.float32).reshape(3, 3),
                self.torch.as_tensor(np.asarray(st), dtype=self.torch.float32).reshape(-1))

    def _batch(self, parts):
        """One batched graph (on the model's device) from :meth:`_graph_parts` of several structures."""
        from torch_geometric.data import Batch

        batch = Batch.from_data_list([p[0] for p in parts]).to(self.device)
        lattice = self.torch.stack([p[1] for p in parts]).to(self.device)
        state = self.torch.stack([p[2] for p in parts]).to(self.device)
        return batch, lattice, state

    def _graphs(self, atoms_list):
        return self._batch([self._graph_parts(a) for a in atoms_list])

    def _energy_graph(self, batch, lattice, state):
        """Total energies with positions as differentiable inputs (mirrors matgl's ``Potential.forward``)."""
        pot = self.model
        g = batch
        g.lattice = lattice[g.batch[g.edge_index[0]]]
        g.pbc_offshift = (g.pbc_offset.unsqueeze(dim=-1) * g.lattice).sum(dim=1)
        g.pos = (g.frac_coords.unsqueeze(-1) * lattice[g.batch]).sum(dim=1)
        g.pos.requires_grad_(True)
        energies = pot.model(g=g, state_attr=state, l_g=None)
        energies = pot.data_std * energies + pot.data_mean
        if getattr(pot, "calc_repuls", False):
            energies = energies + pot.repuls(pot.model.element_types, g)
        if pot.element_refs is not None:
            energies = energies + self.torch.squeeze(pot.element_refs(g))
        return energies.reshape(-1), g.pos

    #: Hessian routes of :meth:`hessians`
    HESSIAN_ROUTES = ("rows", "replicate", "vmap")

    @deterministic_torch()  # a contextlib context manager is also a decorator (a fresh one per call)
    def hessians(self, atoms_list: Sequence[Atoms], delta: float = 0.01,
                 labels: Sequence[str] | None = None, rows_per_batch: int | None = None,
                 route: str | None = None) -> np.ndarray:
        """Exact (autograd) Hessians, (n, 3N, 3N) in eV/Å².

        Three routes give the same values (to float32 round-off; tested):

        * ``"rows"``: one graph, the rows taken one by one by double backward (what matgl's
          ``calc_hessian`` does). What the CPU does fastest; the default there.
        * ``"replicate"``: the structure replicated ``rows_per_batch`` times (default 48) in one
          batched graph, one double-backward pass yields that many rows (copy *b* contributes
          row *k_b*): batched vector–Jacobian products that keep a GPU busy. The CUDA default.
        * ``"vmap"``: one graph, ``rows_per_batch`` (default 48) unit vectors back-propagated at once
          through the force graph (``torch.autograd.grad(..., is_grads_batched=True)``, vmap over the
          backward pass): batched VJPs without the replicated graph's memory.

        ``rows_per_batch`` alone (without ``route``) selects ``"replicate"`` when > 1 (the older
        interface). ``delta`` is unused (interface compatibility with finite differences).
        """
        torch = self.torch
        on_cuda = str(self.device).startswith("cuda")
        if route is None:
            route = ("replicate" if rows_per_batch > 1 else "rows") if rows_per_batch is not None else (
                "replicate" if on_cuda else "rows")
        if route not in self.HESSIAN_ROUTES:
            raise ValueError(f"unknown Hessian route {route!r}; choose one of {self.HESSIAN_ROUTES}")
        chunk = max(1, int(rows_per_batch or 48))
        out = []
        for k, atoms in enumerate(atoms_list):
            lab = _label(labels, k, atoms)
            self.check_elements(atoms.get_chemical_symbols(), lab)
            n3 = 3 * len(atoms)
            h = np.zeros((n3, n3))
            with self._lock:
                if route == "replicate":
                    for start in range(0, n3, chunk):
                        rows = np.arange(start, min(n3, start + chunk))
                        batch, lattice, state = self._graphs([atoms] * len(rows))
                        energies, pos = self._energy_graph(batch, lattice, state)
                        grad_e = torch.autograd.grad(energies.sum(), pos, create_graph=True)[0]
                        g = grad_e.reshape(len(rows), n3)
                        sel = g[torch.arange(len(rows)), torch.as_tensor(rows)]
                        hrows = torch.autograd.grad(sel.sum(), pos)[0].reshape(len(rows), n3)
                        h[rows] = hrows.detach().cpu().double().numpy()
                else:
                    batch, lattice, state = self._graphs([atoms])
                    energies, pos = self._energy_graph(batch, lattice, state)
                    grad_e = torch.autograd.grad(energies.sum(), pos, create_graph=True)[0].reshape(-1)
                    if route == "rows":
                        for i in range(n3):
                            row = torch.autograd.grad(grad_e[i], pos, retain_graph=i < n3 - 1)[0]
                            h[i] = row.reshape(-1).detach().cpu().double().numpy()
                    else:  # vmap
                        for start in range(0, n3, chunk):
                            stop = min(n3, start + chunk)
                            eye = torch.zeros((stop - start, n3), dtype=grad_e.dtype, device=grad_e.device)
                            eye[torch.arange(stop - start), torch.arange(start, stop)] = 1.0
                            hrows = torch.autograd.grad(grad_e, pos, grad_outputs=eye, is_grads_batched=True,
                                                        retain_graph=stop < n3)[0]
                            h[start:stop] = hrows.reshape(stop - start, n3).detach().cpu().double().numpy()
                self.hessian_calls += 1
            if not np.all(np.isfinite(h)):
                raise UnphysicalForcesError(lab, "model returned a non-finite Hessian")
            out.append(0.5 * (h + h.T))
        return np.asarray(out)

    def _compute(self, atoms_list):
        batch, lattice, state = self._graphs(atoms_list)
        if len(atoms_list) == 1:
            lattice = lattice[0:1]
        out = self.model(batch, lattice, state)
        energies = out[0].detach().cpu().numpy().reshape(-1)
        forces_all = out[1].detach().cpu().numpy()
        counts = np.cumsum([0] + [len(a) for a in atoms_list])
        forces = [forces_all[counts[i] : counts[i + 1]] for i in range(len(atoms_list))]
        return energies, forces


class CHGNetPotential(Potential):
    """CHGNet (weights shipped in the ``chgnet`` wheel), batched through ``predict_structure``."""

    batch_size = 16
    #: ~10 MB per atom of a batch on CPU (16 x 40 atoms: 6.5 GB); 16 x 135 atoms was killed for memory at 22 GB
    max_batch_atoms = 640

    def __init__(self, model, identity: ModelIdentity, device: str = "cpu",
                 max_force: float = DEFAULT_MAX_FORCE) -> None:
        from pymatgen.core import Element

        self.model = model.to(device)
        self.model.eval()
        n_elem = int(model.atom_embedding.embedding.num_embeddings) if hasattr(
            model, "atom_embedding") else 94
        super().__init__(identity, device, [Element.from_Z(z).symbol for z in range(1, n_elem + 1)], max_force)
        self._calc = None

    def ase_calculator(self):
        if self._calc is None:
            from chgnet.model import CHGNetCalculator

            self._calc = CHGNetCalculator(model=self.model, use_device=self.device)
        return self._calc

    def _compute(self, atoms_list):
        from pymatgen.io.ase import AseAtomsAdaptor

        structures = [AseAtomsAdaptor.get_structure(a) for a in atoms_list]
        preds = self.model.predict_structure(structures, task="ef", batch_size=self.batch_size)
        if isinstance(preds, dict):
            preds = [preds]
        # CHGNet energies are per atom
        energies = np.array([float(p["e"]) * len(a) for p, a in zip(preds, atoms_list, strict=True)])
        forces = [np.asarray(p["f"], dtype=float) for p in preds]
        return energies, forces


# --------------------------------------------------------------------------------------------
# loading
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelSpec:
    """A model request: a spec string (see module docstring) and an optional device."""

    spec: str
    device: str | None = None

    @classmethod
    def coerce(cls, spec: str | ModelSpec | os.PathLike, device: str | None = None) -> ModelSpec:
        if isinstance(spec, ModelSpec):
            return spec if device is None else ModelSpec(spec.spec, device)
        return cls(str(spec), device)


def _is_matgl_dir(path: Path) -> bool:
    return path.is_dir() and (path / "model.json").exists()


def _network_reachable(host: str = "huggingface.co", port: int = 443, timeout: float = 2.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _load_matgl_dir(path: Path, device: str) -> MatglPotential:
    os.environ["HF_HUB_OFFLINE"] = "1"  # a local directory never needs the hub
    import matgl

    try:
        model = matgl.load_model(str(path))
    except Exception as exc:  # matgl raises many types
        raise ModelLoadError(None, f"matgl could not load the model directory {path}: {exc}") from exc
    digest, files = sha256_dir(path)
    meta = {}
    try:
        meta = json.loads((path / "model.json").read_text())
    except (OSError, ValueError):
        pass
    name = path.name
    if "metadata" in meta and isinstance(meta["metadata"], dict) and meta["metadata"].get("name"):
        name = str(meta["metadata"]["name"])
    ident = ModelIdentity(name=name, kind="matgl", sha256=digest, source=str(path.resolve()), package="matgl",
                          package_version=_pkg_version("matgl"), files=files)
    return MatglPotential(model, ident, device)


def _load_matgl_hub(name: str, device: str) -> MatglPotential:
    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in {"0", "", "false", "False"}
    if not offline and not _network_reachable():
        offline = True
    if offline:
        # matgl caches hub models under ~/.cache/matgl; try the cache before failing fast
        cache = Path(os.environ.get("MATGL_CACHE", Path.home() / ".cache" / "matgl")) / name
        if _is_matgl_dir(cache):
            return _load_matgl_dir(cache, device)
        raise ModelLoadError(
            None,
            f"matgl model '{name}' must be downloaded from the Hugging Face hub, but this machine is offline "
            "(HF_HUB_OFFLINE set or hub unreachable) and it is not in the matgl cache. Pass a local model "
            "directory instead (e.g. --model /path/to/M3GNet-MP-2021.2.8-PES).",
        )
    import matgl

    try:
        model = matgl.load_model(name)
    except Exception as exc:
        raise ModelLoadError(None, f"matgl could not load pretrained model '{name}': {exc}") from exc
    cache = Path(os.environ.get("MATGL_CACHE", Path.home() / ".cache" / "matgl")) / name
    digest, files = sha256_dir(cache) if cache.is_dir() else ("unknown", {})
    ident = ModelIdentity(name=name, kind="matgl", sha256=digest, source=f"hub:{name}", package="matgl",
                          package_version=_pkg_version("matgl"), files=files)
    return MatglPotential(model, ident, device)


def _load_chgnet(version: str, device: str) -> CHGNetPotential:
    try:
        from chgnet.model import CHGNet
    except ImportError as exc:  # pragma: no cover - dependency
        raise ModelLoadError(None, "CHGNet is not installed (pip install chgnet)") from exc
    import chgnet

    model = CHGNet.load(model_name=version, use_device=device, verbose=False)
    weights = sorted((Path(chgnet.__file__).parent / "pretrained" / version).glob("*.pth.tar"))
    digest, files = sha256_files(weights) if weights else ("unknown", {})
    ident = ModelIdentity(name=f"CHGNet-{version}", kind="chgnet", sha256=digest,
                          source=str(weights[0]) if weights else f"chgnet:{version}", package="chgnet",
                          package_version=_pkg_version("chgnet"), files=files)
    return CHGNetPotential(model, ident, device)


def _load_sevennet(name: str, device: str) -> ASEPotential:
    try:
        from sevenn.calculator import SevenNetCalculator
    except ImportError as exc:  # pragma: no cover - dependency
        raise ModelLoadError(None, "SevenNet is not installed (pip install sevenn)") from exc
    calc = SevenNetCalculator(name, device=device)
    ckpt = None
    try:
        from sevenn.util import pretrained_name_to_path

        ckpt = Path(pretrained_name_to_path(name))
    except Exception:  # older/newer sevenn layouts
        ckpt = None
    digest, files = sha256_files([ckpt]) if ckpt and ckpt.is_file() else ("unknown", {})
    elements = None
    try:
        from pymatgen.core import Element

        chem = calc.model.chem_species if hasattr(calc, "model") and hasattr(calc.model, "chem_species") else None
        if chem is None and hasattr(calc, "chemical_species"):
            chem = calc.chemical_species
        if chem:
            elements = [Element(s).symbol for s in chem]
    except Exception:
        elements = None
    ident = ModelIdentity(name="SevenNet-0", kind="sevennet", sha256=digest, source=str(ckpt or name),
                          package="sevenn", package_version=_pkg_version("sevenn"), files=files)
    return ASEPotential(calc, ident, device, elements)


def _load_atomate2(name: str, device: str) -> ASEPotential:
    try:
        from atomate2.forcefields.utils import ase_calculator
    except ImportError as exc:  # pragma: no cover
        raise ModelLoadError(None, "atomate2 is not installed") from exc
    try:
        calc = ase_calculator(name)
    except Exception as exc:
        raise ModelLoadError(None, f"atomate2 could not build force field '{name}': {exc}") from exc
    if calc is None:
        raise ModelLoadError(None, f"atomate2 does not know the force field '{name}'")
    digest = hashlib.sha256(f"atomate2:{name}:{_pkg_version('atomate2')}".encode()).hexdigest()
    ident = ModelIdentity(name=name, kind="atomate2", sha256=digest, source=f"atomate2:{name}", package="atomate2",
                          package_version=_pkg_version("atomate2"))
    return ASEPotential(calc, ident, device)


#: What ``default`` means. The shipped ``tdphonon-m3gnet`` (2026-12-07, 16 CPU epochs with mode-weighted and
#: base-anharmonic 300/600 K data) is not the default yet. It cuts the harmonic error of the base M3GNet
#: on its training sets 6x, and on the SrTiO3 validation case it opens both harmonic instabilities.
#: But its self-consistent R at 300 K converges to an imaginary fixed point of the |ν| policy (−2.64 THz;
#: DFT SCPH 1.93), SevenNet-0 is closer to DFT for the R mode, harmonic and at 300 K
#: (benchmarks/results/validation_SrTiO3.json, docs/validation.md), and SevenNet-0 is more accurate on
#: compounds held out of the recipe's data (0.99 vs 1.55 THz; finetune_heldout_shipped.json).
DEFAULT_MODEL_SPEC = "sevennet-0"


def resolve_model_spec(spec: str) -> str:
    """``default`` → :data:`DEFAULT_MODEL_SPEC`; every other spec is returned unchanged.

    (Results name the concrete model, never ``default``.)
    """
    s = str(spec).strip()
    return DEFAULT_MODEL_SPEC if s.lower() == "default" else s


def _resolve(spec: str, device: str) -> Potential:
    s = resolve_model_spec(spec)
    low = s.lower()
    if low.startswith("harmonic:"):
        from tdphonon.analytic import ForceConstantPotential

        return ForceConstantPotential.from_phonopy_file(s.split(":", 1)[1])
    if low == "tdphonon-m3gnet" and _is_matgl_dir(SHIPPED_MODEL_DIR):
        return _load_matgl_dir(SHIPPED_MODEL_DIR, device)
    path = Path(os.path.expanduser(s))
    if _is_matgl_dir(path):
        return _load_matgl_dir(path, device)
    if path.exists():
        raise ModelLoadError(None, f"{path} exists but is not a matgl model directory (no model.json)")
    if low in _CHGNET_ALIASES:
        return _load_chgnet("0.3.0", device)
    if low.startswith("chgnet-") or low.startswith("chgnet:"):
        return _load_chgnet(s.split("-", 1)[1] if "-" in s else s.split(":", 1)[1], device)
    if low in _SEVENNET_ALIASES:
        return _load_sevennet("7net-0", device)
    if low.startswith("sevennet:"):
        return _load_sevennet(s.split(":", 1)[1], device)
    if low.startswith("matgl:"):
        return _load_matgl_hub(s.split(":", 1)[1], device)
    if low.startswith("atomate2:"):
        return _load_atomate2(s.split(":", 1)[1], device)
    if "m3gnet" in low or "tensornet" in low or "chgnet-mat" in low:
        return _load_matgl_hub(s, device)
    raise ModelLoadError(
        None,
        f"unknown model spec '{spec}': give a matgl model directory, 'matgl:<name>', 'chgnet', 'sevennet-0', "
        "'atomate2:<forcefield>' or 'harmonic:<phonopy_params.yaml>'",
    )


_CACHE: dict[tuple[str, str], Potential] = {}
_CACHE_LOCK = threading.Lock()
#: seconds spent loading each cached model (provenance / benchmarks)
LOAD_SECONDS: dict[tuple[str, str], float] = {}


def load_potential(spec: str | ModelSpec | os.PathLike, device: str | None = None, cache: bool = True) -> Potential:
    """Return a :class:`Potential` for ``spec``, loading each (spec, device) once per process.

    Parameters
    ----------
    spec
        Model spec (see module docstring) or :class:`ModelSpec`.
    device
        ``cpu``, ``cuda``, ``cuda:1``...; default: CUDA when available, else CPU.
    cache
        Reuse an already loaded model of this process (default). Workers rely on this.

    Raises
    ------
    ModelLoadError
        Unknown spec, missing package, unreadable directory, or hub model while offline.
    """
    ms = ModelSpec.coerce(spec, device)
    dev = ms.device or default_device()
    if dev.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise ModelLoadError(None, f"device '{dev}' requested (argument or TDPHONON_DEVICE) but torch "
                                 f"{torch.__version__} sees no CUDA GPU on {socket.gethostname()}: install the "
                                 "CUDA build of torch on GPU nodes, or use --device cpu")
    key = (ms.spec, dev)
    if cache:
        with _CACHE_LOCK:
            if key in _CACHE:
                return _CACHE[key]
    t0 = time.perf_counter()
    pot = _resolve(ms.spec, dev)
    LOAD_SECONDS[key] = time.perf_counter() - t0
    if cache:
        with _CACHE_LOCK:
            _CACHE[key] = pot
    return pot


def clear_cache() -> None:
    """Forget all cached models (tests; frees memory)."""
    with _CACHE_LOCK:
        _CACHE.clear()


@functools.lru_cache(maxsize=1)
def shipped_model_available() -> bool:
    """Whether the project's own fine-tuned model ships with this installation."""
    return _is_matgl_dir(SHIPPED_MODEL_DIR)
