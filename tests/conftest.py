"""Shared fixtures. Tests import the package from src/ even when it is not installed."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "src") not in sys.path:
    sys.path.insert(0, str(ROOT / "src"))


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def default_config() -> dict:
    """config/config.yaml, merged and schema-validated exactly as the CLI does."""
    from pclbench.cli import load_config

    return load_config([ROOT / "config" / "config.yaml"])


@pytest.fixture()
def one_torch_thread():
    """Tiny tensors: one thread avoids contention with other test processes; restored afterwards."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
