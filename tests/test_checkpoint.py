"""Checkpoints (checkpoint.py): atomic save, weights_only load, clear errors, encoder round trip."""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from pclbench.pretrain.checkpoint import (FORMAT, capture_rng_state, load_checkpoint, load_encoder, restore_rng_state,
                                 save_checkpoint)
from pclbench.models import build_encoder

torch.set_num_threads(2)


def make_state(encoder, **over):
    state = {"format": FORMAT, "method": "random", "encoder": encoder.spec,
             "encoder_state": encoder.state_dict(), "model": encoder.state_dict(), "optimizer": None,
             "scheduler": None, "scaler": None, "extra": {"dwa": {"history": [[1, {"face": 2.0}]]}},
             "rng": capture_rng_state(), "epoch": 0, "iteration": 0, "finished": True,
             "config": {"model": {"width": 4}, "pretrain": {"lr": 1e-4, "betas": [0.9, 0.999]}}}
    state.update(over)
    return state


@pytest.fixture
def encoder():
    torch.manual_seed(0)
    return build_encoder("facecycle", width=4)


def test_round_trip_with_weights_only(tmp_path, encoder):
    path = save_checkpoint(tmp_path / "c.pt", make_state(encoder))
    raw = torch.load(path, weights_only=True)  # the file needs no unpickling of arbitrary objects
    assert raw["format"] == FORMAT and raw["config"]["pretrain"]["betas"] == [0.9, 0.999]
    state = load_checkpoint(path)
    for k, v in encoder.state_dict().items():
        assert torch.equal(state["encoder_state"][k], v)
    assert state["extra"] == {"dwa": {"history": [[1, {"face": 2.0}]]}}


def test_load_encoder_gives_identical_features(tmp_path, encoder):
    path = save_checkpoint(tmp_path / "c.pt", make_state(encoder))
    loaded = load_encoder(path)
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
    x = torch.rand(3, 3, 64, 64)
    encoder.eval()
    with torch.no_grad():
        want, got = encoder.forward_features(x), loaded.forward_features(x)
    assert set(got) == {"trunk", "face", "pose"}
    for k in want:
        assert torch.equal(want[k], got[k])


def test_failed_save_leaves_no_partial_file_and_keeps_the_old_one(tmp_path, encoder):
    path = save_checkpoint(tmp_path / "c.pt", make_state(encoder, epoch=1))
    before = path.read_bytes()
    with pytest.raises(Exception):
        save_checkpoint(path, make_state(encoder, epoch=2, extra={"bad": lambda: 0}))  # cannot be pickled
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.pt"]
    assert path.read_bytes() == before
    with pytest.raises(Exception):
        save_checkpoint(tmp_path / "new.pt", make_state(encoder, extra={"bad": lambda: 0}))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.pt"]


def test_state_must_be_complete(tmp_path, encoder):
    state = make_state(encoder)
    del state["rng"]
    with pytest.raises(ValueError, match="rng"):
        save_checkpoint(tmp_path / "c.pt", state)


def test_not_a_checkpoint_errors_name_the_path_and_what_was_found(tmp_path, encoder):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"this is not a torch file")
    with pytest.raises(ValueError, match="junk.pt is not a pclbench checkpoint"):
        load_checkpoint(junk)
    authors = tmp_path / "best.pth"
    torch.save({"epoch": 50, "state_dict": {"module.encoder.conv1.0.weight": torch.zeros(1)}}, authors)
    with pytest.raises(ValueError, match=r"best.pth is not a pclbench checkpoint.*format is None.*authors'"):
        load_checkpoint(authors)
    tensor = tmp_path / "tensor.pt"
    torch.save(torch.zeros(2), tensor)
    with pytest.raises(ValueError, match="holds a Tensor"):
        load_checkpoint(tensor)
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_checkpoint(tmp_path / "missing.pt")


def test_rng_state_round_trip():
    state = capture_rng_state()

    def draw():
        return random.random(), float(np.random.rand()), float(np.random.randn()), float(torch.rand(1))

    first = draw()
    restore_rng_state(state)
    assert draw() == first
