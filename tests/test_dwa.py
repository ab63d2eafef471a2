"""Dynamic Weight Averaging (docs/method.md §2.8)."""
from __future__ import annotations

import json
import math

import pytest

from pclbench.pretrain.losses import DynamicWeightAverage


def make(**kw) -> DynamicWeightAverage:
    args = {"tasks": ("face", "pose"), "temperature": 2.0, "start_epoch": 2}
    args.update(kw)
    return DynamicWeightAverage(**args)


def test_weights_are_one_until_start_epoch():
    dwa = make()
    for epoch in (1, 2):
        assert dwa.weights(epoch) == {"face": 1.0, "pose": 1.0}
        dwa.update(epoch, {"face": 3.0 / epoch, "pose": 1.0 + epoch})


def test_hand_example():
    # epoch 1: face 2.0, pose 1.0; epoch 2: face 1.0, pose 1.5 -> r = (0.5, 1.5), T = 2:
    # w_face = 2 e^0.25 / (e^0.25 + e^0.75) = 0.7550813, w_pose = 1.2449187
    dwa = make()
    dwa.update(1, {"face": 2.0, "pose": 1.0})
    dwa.update(2, {"face": 1.0, "pose": 1.5})
    w = dwa.weights(3)
    assert w["face"] == pytest.approx(0.7550813, abs=1e-6)
    assert w["pose"] == pytest.approx(1.2449187, abs=1e-6)
    assert sum(w.values()) == pytest.approx(2.0)


def test_weights_sum_to_k_for_three_tasks():
    dwa = make(tasks=("a", "b", "c"), temperature=0.7, start_epoch=0)
    dwa.update(1, {"a": 1.0, "b": 2.0, "c": 0.5})
    dwa.update(2, {"a": 0.9, "b": 2.5, "c": 0.1})
    w = dwa.weights(3)
    assert sum(w.values()) == pytest.approx(3.0)
    r = {"a": 0.9, "b": 1.25, "c": 0.2}
    z = sum(math.exp(v / 0.7) for v in r.values())
    for k, v in r.items():
        assert w[k] == pytest.approx(3 * math.exp(v / 0.7) / z)


def test_state_round_trip_gives_the_same_weights():
    dwa = make()
    for epoch, (f, p) in enumerate([(4.0, 3.0), (3.5, 2.0), (3.0, 1.9)], start=1):
        dwa.update(epoch, {"face": f, "pose": p})
    state = json.loads(json.dumps(dwa.state_dict()))  # must survive a JSON / checkpoint round trip
    other = make()
    other.load_state_dict(state)
    assert other.weights(4) == dwa.weights(4)
    with pytest.raises(ValueError, match="temperature"):
        make(temperature=1.0).load_state_dict(state)


def test_errors():
    dwa = make()
    with pytest.raises(ValueError, match="no recorded losses"):
        dwa.weights(3)
    with pytest.raises(ValueError, match="expected losses"):
        dwa.update(1, {"face": 1.0})
    with pytest.raises(ValueError, match="finite"):
        dwa.update(1, {"face": 0.0, "pose": 1.0})
    with pytest.raises(ValueError, match="temperature"):
        DynamicWeightAverage(("face", "pose"), 0.0, 2)
    with pytest.raises(ValueError, match="start_epoch"):
        DynamicWeightAverage(("face", "pose"), 2.0)
