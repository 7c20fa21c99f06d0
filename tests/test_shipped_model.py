"""The project's own model (issue 5): shipped in the package, loadable by name, with a truthful card."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tdphonon.potentials import (
    DEFAULT_MODEL_SPEC,
    SHIPPED_MODEL_DIR,
    load_potential,
    resolve_model_spec,
    sha256_dir,
    shipped_model_available,
)

pytestmark = pytest.mark.mlip


@pytest.fixture(scope="module")
def card():
    return json.loads((SHIPPED_MODEL_DIR / "model_card.json").read_text())


def test_shipped_model_loads_by_name_and_matches_its_card(card):
    assert shipped_model_available()
    # not the default until it passes the SrTiO3 validation (see DEFAULT_MODEL_SPEC)
    assert resolve_model_spec("default") == DEFAULT_MODEL_SPEC == "sevennet-0"
    digest, files = sha256_dir(SHIPPED_MODEL_DIR)
    assert digest == card["sha256"] and files == card["files"]  # the card describes these very weights
    pot = load_potential("tdphonon-m3gnet", device="cpu", cache=False)
    assert pot.identity.kind == "matgl" and pot.identity.sha256 == card["sha256"]
    assert card["base_model"]["name"] == "M3GNet-MP-2021.2.8-PES"
    # the card states what it was trained on and how accurate it is
    assert card["data"]["compounds"] and card["train_structures"] > 0
    ev = card["evaluation"]
    assert ev["units"] == "THz" and ev["per_set"]
    assert ev["mae_thz_finetuned_train"] < ev["mae_thz_base_train"]
    assert (SHIPPED_MODEL_DIR / "README.md").read_text().count("|") > 10  # per-set accuracy table


def test_shipped_model_loads_with_stock_matgl_and_gives_symmetric_forces(srtio3_cif):
    import matgl
    from matgl.ext.ase import PESCalculator
    from pymatgen.core import Structure
    from pymatgen.io.ase import AseAtomsAdaptor

    model = matgl.load_model(str(SHIPPED_MODEL_DIR))
    atoms = AseAtomsAdaptor.get_atoms(Structure.from_file(srtio3_cif)) * (2, 2, 2)
    atoms.calc = PESCalculator(model)
    f0 = atoms.get_forces()
    assert np.abs(f0).max() < 1e-4  # cubic perovskite: every force vanishes by symmetry
    atoms.positions[0, 0] += 0.02
    f = atoms.get_forces()
    assert abs(f.sum(axis=0)).max() < 1e-4  # translation invariance: forces sum to zero
    assert f[0, 0] < -0.05  # restoring force on the displaced atom
