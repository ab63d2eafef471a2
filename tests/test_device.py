"""core/device.py: ``resolve_device`` against hand-written expectations, with and without a (faked) GPU."""
from __future__ import annotations

import pytest
import torch

from pclbench.core.config import ConfigError
from pclbench.core.device import resolve_device


@pytest.fixture
def gpus(monkeypatch):
    """Pretend torch sees ``n`` CUDA devices."""
    def set_count(n: int) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: n > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: n)
    return set_count


def test_without_a_gpu(gpus):
    gpus(0)
    assert resolve_device("auto", "evaluate.device") == torch.device("cpu")
    assert resolve_device("auto", "pretrain.device", local_rank=1) == torch.device("cpu")
    assert resolve_device("cpu", "probe.device") == torch.device("cpu")
    for name in ("cuda", "cuda:0"):
        with pytest.raises(ConfigError, match=r"^pretrain\.device: .* CUDA is not available"):
            resolve_device(name, "pretrain.device")


def test_with_two_gpus(gpus):
    gpus(2)
    assert resolve_device("auto", "evaluate.device") == torch.device("cuda")
    assert resolve_device("cuda", "probe.device") == torch.device("cuda")
    assert resolve_device("cuda:1", "probe.device") == torch.device("cuda", 1)
    assert resolve_device("cpu", "probe.device") == torch.device("cpu")
    with pytest.raises(ConfigError, match=r"^probe\.device: 'cuda:2' .* 2 CUDA device\(s\)"):
        resolve_device("cuda:2", "probe.device")


def test_distributed_ranks_get_their_local_gpu(gpus):
    gpus(2)
    assert resolve_device("cuda", "pretrain.device", local_rank=1) == torch.device("cuda", 1)
    assert resolve_device("auto", "pretrain.device", local_rank=0) == torch.device("cuda", 0)
    assert resolve_device("cuda:0", "pretrain.device", local_rank=1) == torch.device("cuda", 0)  # explicit wins


@pytest.mark.parametrize("name", ["gpu", "CUDA", "cuda:", "cuda:x", "", "cpu:0", "tpu"])
def test_unknown_names_are_refused(gpus, name):
    gpus(1)
    with pytest.raises(ConfigError, match=r"^align\.device: unknown device"):
        resolve_device(name, "align.device")


def test_mps_only_where_available(gpus, monkeypatch):
    gpus(0)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(ConfigError, match=r"^align\.device: 'mps' .* not available"):
        resolve_device("mps", "align.device")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert str(resolve_device("mps", "align.device")) == "mps"


def test_str_form_for_string_apis(gpus):
    """face_alignment takes a device string: callers pass ``str(resolve_device(...))``."""
    gpus(1)
    assert str(resolve_device("auto", "align.device")) == "cuda"
    assert str(resolve_device("cuda:0", "align.device")) == "cuda:0"
    gpus(0)
    assert str(resolve_device("auto", "align.device")) == "cpu"
