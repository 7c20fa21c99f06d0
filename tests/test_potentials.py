"""tdphonon.potentials: loading, identity, caching, batching and output validation."""

from __future__ import annotations

import time

import numpy as np
import pytest
from ase.build import bulk

from conftest import M3GNET_DIR, requires_m3gnet
from tdphonon.errors import ModelLoadError, UnphysicalForcesError, UnsupportedElementsError
from tdphonon.potentials import ASEPotential, ModelIdentity, load_potential, sha256_dir


def _rattled(symbol_structure, n=3, amp=0.03, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        a = symbol_structure.copy()
        a.positions += rng.normal(scale=amp, size=a.positions.shape)
        out.append(a)
    return out


@requires_m3gnet
def test_m3gnet_dir_regression_energy_and_identity(m3gnet):
    # ../shared/models README: rocksalt MgO at a = 4.25 Å gives about -5.94 eV/atom with the converted
    # weights (the unconverted ones give about -2.0).
    mgo = bulk("MgO", "rocksalt", a=4.25)
    e, f = m3gnet.energies_and_forces([mgo])
    assert e[0] / len(mgo) == pytest.approx(-5.94, abs=0.02)
    assert np.abs(f[0]).max() < 1e-3  # perfect rocksalt: zero forces by symmetry
    ident = m3gnet.identity
    assert ident.kind == "matgl" and ident.sha256 == sha256_dir(M3GNET_DIR)[0]
    assert set(ident.files) >= {"model.pt", "model.json", "state.pt"}


@requires_m3gnet
def test_batched_forces_equal_single_calls(m3gnet):
    cells = _rattled(bulk("MgO", "rocksalt", a=4.25).repeat(2), n=3) + _rattled(bulk("Si", "diamond", 5.45), n=2)
    e_b, f_b = m3gnet.energies_and_forces(cells)
    for i, a in enumerate(cells):
        e1, f1 = m3gnet.energies_and_forces([a])
        assert e1[0] == pytest.approx(e_b[i], abs=1e-4)
        np.testing.assert_allclose(f1[0], f_b[i], atol=1e-4)


def test_chgnet_batched_forces_and_identity(chgnet):
    cells = _rattled(bulk("Si", "diamond", 5.45).repeat((2, 1, 1)), n=3)
    calls = chgnet.force_calls
    f = chgnet.forces(cells)
    assert f.shape == (3, 4, 3)
    assert chgnet.force_calls == calls + 3
    # same forces through the ASE calculator of the same model
    a = cells[1].copy()
    a.calc = chgnet.ase_calculator()
    np.testing.assert_allclose(a.get_forces(), f[1], atol=2e-4)
    assert chgnet.identity.name == "CHGNet-0.3.0" and len(chgnet.identity.sha256) == 64


def test_batches_bound_structures_and_atoms(chgnet, monkeypatch):
    from tdphonon.potentials import batches

    cells = [bulk("Si", "diamond", 5.45).repeat((k, 1, 1)) for k in (1, 3, 1, 1, 5, 1)]  # 2, 6, 2, 2, 10, 2 atoms
    assert [[len(a) for a in b] for b in batches(cells, 16)] == [[2, 6, 2, 2, 10, 2]]
    assert [[len(a) for a in b] for b in batches(cells, 2)] == [[2, 6], [2, 2], [10, 2]]
    # an atom budget splits earlier; a structure above the budget is a batch of its own
    assert [[len(a) for a in b] for b in batches(cells, 16, max_atoms=8)] == [[2, 6], [2, 2], [10], [2]]
    assert sum(len(b) for b in batches(cells, 3, max_atoms=4)) == len(cells)
    # the atom budget is honoured by the force evaluation, with the same forces
    rattled = _rattled(bulk("Si", "diamond", 5.45).repeat((2, 1, 1)), n=3)
    sizes = []
    compute = type(chgnet)._compute

    def spy(self, atoms_list):
        sizes.append(sum(len(a) for a in atoms_list))
        return compute(self, atoms_list)

    f_all = chgnet.forces(rattled)
    monkeypatch.setattr(type(chgnet), "_compute", spy)
    monkeypatch.setattr(chgnet, "max_batch_atoms", 8)
    f_small = chgnet.forces(rattled)
    assert sizes == [8, 4]
    np.testing.assert_allclose(f_small, f_all, atol=1e-5)


def test_model_cache_loads_once(sevennet):
    t0 = time.perf_counter()
    again = load_potential("sevennet-0", device="cpu")
    assert again is sevennet
    assert time.perf_counter() - t0 < 0.05
    assert sevennet.identity.sha256 != "unknown"


_FORCES_HASH = """
import hashlib, sys
import numpy as np
from pymatgen.core import Structure
from pymatgen.io.ase import AseAtomsAdaptor
from tdphonon.potentials import load_potential
s = Structure.from_file(sys.argv[1]); s.make_supercell([3, 3, 3])
a = AseAtomsAdaptor.get_atoms(s)
a.positions += np.random.default_rng(0).normal(scale=0.05, size=a.positions.shape)
print(hashlib.sha256(np.asarray(load_potential("sevennet-0", device="cpu").forces([a])).tobytes()).hexdigest())
"""


@pytest.mark.mlip
def test_forces_are_bitwise_reproducible_across_processes(srtio3_cif):
    """SevenNet-0 on 2 CPU threads gave forces that differed in the last bits from process to process
    (135-atom SrTiO3); evaluated under torch's deterministic algorithms they are the same bits."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "2"}
    out = [subprocess.run([sys.executable, "-c", _FORCES_HASH, str(srtio3_cif)], env=env, capture_output=True,
                          text=True, check=True).stdout.split()[-1] for _ in range(3)]
    assert len(set(out)) == 1, out


def test_deterministic_torch_restores_the_previous_mode():
    import torch

    from tdphonon.potentials import deterministic_torch

    assert not torch.are_deterministic_algorithms_enabled()
    with deterministic_torch():
        assert torch.are_deterministic_algorithms_enabled()
    assert not torch.are_deterministic_algorithms_enabled()


def test_random_matgl_model_dir_runs(random_m3gnet_dir):
    pot = load_potential(random_m3gnet_dir, device="cpu")
    f = pot.forces(_rattled(bulk("NaCl", "rocksalt", a=5.6), n=2))
    assert f.shape == (2, 2, 3) and np.all(np.isfinite(f))
    assert pot.identity.sha256 == sha256_dir(random_m3gnet_dir)[0]


def test_offline_hub_name_fails_fast(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("MATGL_CACHE", str(tmp_path))
    t0 = time.perf_counter()
    with pytest.raises(ModelLoadError, match="offline"):
        load_potential("matgl:M3GNet-MP-2021.2.8-PES", cache=False)
    assert time.perf_counter() - t0 < 10


@pytest.mark.parametrize("spec", ["no-such-model", "/definitely/not/a/dir/model"])
def test_unknown_spec(spec):
    with pytest.raises(ModelLoadError):
        load_potential(spec, cache=False)


def test_existing_dir_without_model_json(tmp_path):
    with pytest.raises(ModelLoadError, match="not a matgl model directory"):
        load_potential(tmp_path, cache=False)


class _BadCalc:
    """Minimal ASE-like calculator returning chosen forces."""

    def __init__(self, value):
        from ase.calculators.calculator import Calculator

        outer = self

        class C(Calculator):
            implemented_properties = ("energy", "forces")

            def calculate(self, atoms=None, properties=("energy",), system_changes=None):
                super().calculate(atoms, properties, system_changes or [])
                f = np.zeros((len(atoms), 3))
                f[0, 0] = outer.value
                self.results = {"energy": 0.0, "forces": f}

        self.value = value
        self.calc = C()


@pytest.mark.parametrize("value,match", [(np.nan, "NaN"), (1e4, "exceeds")])
def test_unphysical_forces_name_the_structure(value, match):
    ident = ModelIdentity("bad", "test", "0" * 64, "test", "tdphonon", "0")
    pot = ASEPotential(_BadCalc(value).calc, ident)
    si = bulk("Si", "diamond", 5.43)
    with pytest.raises(UnphysicalForcesError, match=match) as err:
        pot.forces([si, si], labels=["good-one", "Si-sample-7"])
    assert "good-one" in str(err.value)  # first offending structure is named
    assert err.value.label == "good-one"


def test_unsupported_elements_rejected(m3gnet):
    a = bulk("Po", "sc", a=3.35)  # polonium is not among M3GNet's 89 elements
    with pytest.raises(UnsupportedElementsError, match="Po"):
        m3gnet.forces([a], labels=["Po-sc"])


def test_fd_hessian_matches_analytic(nacl_fd):
    from tdphonon.analytic import ForceConstantPotential
    from tdphonon.potentials import fd_hessians

    pot = ForceConstantPotential.from_phonopy(nacl_fd, quartic=2.0)
    a = pot.reference.copy()
    a.positions += np.random.default_rng(1).normal(scale=0.05, size=a.positions.shape)
    h_exact = pot.hessians([a])[0]
    h_fd = fd_hessians(pot, [a], delta=1e-3)[0]
    np.testing.assert_allclose(h_fd, h_exact, atol=1e-5)


@pytest.mark.mlip
def test_atomate2_force_field_name(chgnet):
    """Any atomate2 force-field name works through atomate2's own calculator factory."""
    pot = load_potential("atomate2:CHGNet", device="cpu")
    assert pot.identity.kind == "atomate2"
    si = bulk("Si", "diamond", 5.43).repeat((2, 1, 1))
    si.positions[0] += [0.05, 0.0, 0.0]
    np.testing.assert_allclose(pot.forces([si])[0], chgnet.forces([si])[0], atol=2e-4)


def test_matgl_autograd_hessian_matches_finite_differences(random_m3gnet_dir):
    """The autograd routes (row loop, replicated batch, vmap) agree with each other and with central differences."""
    from tdphonon.potentials import fd_hessians

    pot = load_potential(random_m3gnet_dir, device="cpu")
    a = bulk("NaCl", "rocksalt", a=5.6).repeat((2, 1, 1))
    a.positions += np.random.default_rng(3).normal(scale=0.05, size=a.positions.shape)
    h_loop = pot.hessians([a])[0]
    h_batch = pot.hessians([a], rows_per_batch=5)[0]
    np.testing.assert_allclose(h_batch, h_loop, atol=1e-5 * np.abs(h_loop).max())
    h_vmap = pot.hessians([a], rows_per_batch=7, route="vmap")[0]  # 7 does not divide 3N = 12: a ragged chunk
    np.testing.assert_allclose(h_vmap, h_loop, atol=1e-5 * np.abs(h_loop).max())
    with pytest.raises(ValueError, match="route"):
        pot.hessians([a], route="magic")
    h_fd = fd_hessians(pot, [a], delta=0.01)[0]
    np.testing.assert_allclose(h_fd, h_loop, atol=2e-2 * np.abs(h_loop).max())
    np.testing.assert_allclose(h_loop, h_loop.T, atol=1e-8)


@requires_m3gnet
def test_m3gnet_hessian_equals_matgl_calc_hessian(m3gnet):
    """Same values as matgl's own calc_hessian (1e-5 relative) on displaced SrTiO3."""
    import matgl
    from matgl.ext.ase import PESCalculator
    from pymatgen.core import Lattice, Structure

    from tdphonon.structures import to_ase

    s = Structure(Lattice.cubic(3.91), ["Sr", "Ti", "O", "O", "O"],
                  [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])
    a = to_ase(s)
    a.positions += np.random.default_rng(5).normal(scale=0.04, size=a.positions.shape)
    mine = m3gnet.hessians([a])[0]
    ref_pot = matgl.load_model(str(M3GNET_DIR))
    ref_pot.calc_hessian, ref_pot.calc_stresses = True, False
    b = a.copy()
    b.calc = PESCalculator(ref_pot, stress_unit="eV/A3")
    b.get_potential_energy()
    ref = b.calc.results["hessian"]
    ref = 0.5 * (ref + ref.T)
    np.testing.assert_allclose(mine, ref, atol=1e-5 * np.abs(ref).max())
