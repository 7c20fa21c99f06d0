"""Shared test fixtures: paths to ../shared, offline model hub, small structures."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TDPHONON_DEVICE", "cpu")
warnings.filterwarnings("ignore")

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("TDPHONON_SHARED", ROOT.parent / "shared"))
REFERENCE = SHARED / "reference"
M3GNET_DIR = SHARED / "models" / "M3GNet-MP-2021.2.8-PES"

requires_reference = pytest.mark.skipif(
    not REFERENCE.is_dir(), reason=f"DFT reference data not found at {REFERENCE} (set TDPHONON_SHARED)"
)
requires_m3gnet = pytest.mark.skipif(
    not (M3GNET_DIR / "model.json").exists(), reason=f"converted M3GNet weights not found at {M3GNET_DIR}"
)


@pytest.fixture(scope="session")
def si_structure():
    from pymatgen.core import Lattice, Structure

    return Structure.from_spacegroup("Fd-3m", Lattice.cubic(5.43), ["Si"], [[0, 0, 0]])


@pytest.fixture(scope="session")
def srtio3_cif() -> Path:
    return ROOT / "examples" / "SrTiO3.cif"


@pytest.fixture(scope="session")
def nacl_fd():
    """phonopy object of the DFT (PBE) NaCl finite-displacement set, NAC off."""
    if not REFERENCE.is_dir():
        pytest.skip(f"DFT reference data not found at {REFERENCE}")
    from tdphonon.evaluation import load_reference

    return load_reference(REFERENCE / "phonopy" / "test" / "phonopy_params_NaCl-fd.yaml.xz").phonon


@pytest.fixture(scope="session")
def sevennet():
    from tdphonon.potentials import load_potential

    return load_potential("sevennet-0", device="cpu")


@pytest.fixture(scope="session")
def chgnet():
    from tdphonon.potentials import load_potential

    return load_potential("chgnet", device="cpu")


@pytest.fixture(scope="session")
def m3gnet():
    if not (M3GNET_DIR / "model.json").exists():
        pytest.skip(f"converted M3GNet weights not found at {M3GNET_DIR}")
    from tdphonon.potentials import load_potential

    return load_potential(M3GNET_DIR, device="cpu")


@pytest.fixture(scope="session")
def random_m3gnet_dir(tmp_path_factory) -> Path:
    """A randomly initialised matgl M3GNet saved as a model directory (no download needed)."""
    import torch
    from matgl.apps.pes import Potential
    from matgl.models import M3GNet

    torch.manual_seed(0)
    elements = ("Na", "Cl", "Si", "Mg", "O", "Sr", "Ti")
    model = M3GNet(element_types=elements, is_intensive=False, nblocks=1, units=16, cutoff=5.0,
                   threebody_cutoff=4.0)
    pot = Potential(model=model)
    d = tmp_path_factory.mktemp("models") / "random-m3gnet"
    pot.save(str(d))
    return d


@pytest.fixture(autouse=True)
def _single_blas_thread():
    """One BLAS thread: small eigh/QR calls thrash with OpenBLAS threads on a busy 2-core host."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):
        yield
