"""Weight-space interpolation between a base and a fine-tuned matgl model (WiSE-FT)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from ase.build import bulk

from tdphonon.errors import TDPhononError
from tdphonon.finetune.train import interpolate_weights
from tdphonon.potentials import SHIPPED_MODEL_DIR, load_potential

pytestmark = pytest.mark.mlip


@pytest.fixture(scope="module")
def perturbed_dir(tmp_path_factory):
    """The shipped model with every weight shifted by seeded noise: a stand-in 'fine-tuned' model."""
    import matgl
    import torch

    model = matgl.load_model(str(SHIPPED_MODEL_DIR))
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.model.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    d = tmp_path_factory.mktemp("models") / "perturbed"
    model.save(str(d))
    return d


def _state(path):
    return load_potential(str(path), device="cpu", cache=False).model.state_dict()


def test_interpolation_is_exact_at_the_ends_and_linear_between(perturbed_dir, tmp_path):
    sb, sf = _state(SHIPPED_MODEL_DIR), _state(perturbed_dir)
    outs = {a: interpolate_weights(SHIPPED_MODEL_DIR, perturbed_dir, tmp_path / f"a{a}", alpha=a)
            for a in (0.0, 0.5, 1.0, 1.5)}
    for a, d in outs.items():
        s = _state(d)
        assert set(s) == set(sf)
        for k in sf:
            if sf[k].is_floating_point():
                np.testing.assert_allclose(s[k].numpy(), (sb[k] + a * (sf[k] - sb[k])).numpy(), rtol=0, atol=1e-6)
    # forces: α = 0 is the base model, α = 1 the fine-tuned one
    atoms = bulk("Si", "diamond", a=5.43, cubic=True)
    atoms.positions[0] += [0.05, -0.03, 0.02]
    f = {a: load_potential(str(d), device="cpu", cache=False).forces([atoms])[0] for a, d in outs.items()}
    f_base = load_potential(str(SHIPPED_MODEL_DIR), device="cpu", cache=False).forces([atoms])[0]
    f_ft = load_potential(str(perturbed_dir), device="cpu", cache=False).forces([atoms])[0]
    np.testing.assert_allclose(f[0.0], f_base, atol=1e-5)
    np.testing.assert_allclose(f[1.0], f_ft, atol=1e-5)
    assert not np.allclose(f[0.5], f_base, atol=1e-4)
    # the card states the digest the loader computes and both parents
    card = json.loads((outs[0.5] / "model_card.json").read_text())
    assert card["sha256"] == load_potential(str(outs[0.5]), device="cpu", cache=False).identity.sha256
    assert card["interpolation"]["alpha"] == 0.5
    assert card["interpolation"]["finetuned_model"]["sha256"] != card["interpolation"]["base_model"]["sha256"]


def test_keep_base_prefixes_and_refusals(perturbed_dir, random_m3gnet_dir, tmp_path):
    sb, sf = _state(SHIPPED_MODEL_DIR), _state(perturbed_dir)
    d = interpolate_weights(SHIPPED_MODEL_DIR, perturbed_dir, tmp_path / "swap", alpha=1.0,
                            keep_base=("model.embedding",))
    s = _state(d)
    for k in sf:
        ref = sb[k] if k.startswith("model.embedding") else sf[k]
        np.testing.assert_array_equal(s[k].numpy(), ref.numpy())
    assert json.loads((d / "model_card.json").read_text())["interpolation"]["n_tensors_kept_base"] > 0
    with pytest.raises(TDPhononError, match="differ in architecture"):
        interpolate_weights(SHIPPED_MODEL_DIR, random_m3gnet_dir, tmp_path / "bad", alpha=0.5)
    with pytest.raises(TDPhononError, match="match no weights"):
        interpolate_weights(SHIPPED_MODEL_DIR, perturbed_dir, tmp_path / "bad2", keep_base=("model.nonexistent",))
    with pytest.raises(TDPhononError, match="finite"):
        interpolate_weights(SHIPPED_MODEL_DIR, perturbed_dir, tmp_path / "bad3", alpha=float("nan"))
    with pytest.raises(TDPhononError, match="not a matgl model"):
        interpolate_weights("sevennet-0", perturbed_dir, tmp_path / "bad4")


def test_cli_interpolate_writes_a_loadable_model(perturbed_dir, tmp_path):
    from typer.testing import CliRunner

    from tdphonon.cli import app

    out = tmp_path / "cli"
    res = CliRunner().invoke(app, ["finetune", "interpolate", str(SHIPPED_MODEL_DIR), str(perturbed_dir),
                                   "--alpha", "0.25", "--out", str(out)])
    assert res.exit_code == 0, res.output
    sb, sf, s = _state(SHIPPED_MODEL_DIR), _state(perturbed_dir), _state(out)
    k = next(k for k in sf if k.startswith("model.final_layer"))
    np.testing.assert_allclose(s[k].numpy(), (sb[k] + 0.25 * (sf[k] - sb[k])).numpy(), atol=1e-6)
    res = CliRunner().invoke(app, ["finetune", "interpolate", str(SHIPPED_MODEL_DIR), "sevennet-0",
                                   "--out", str(tmp_path / "bad")])
    assert res.exit_code != 0 and "not a matgl model" in res.output
