"""The per-iteration metrics of a pretraining run: ``metrics.jsonl``, ``metrics.csv`` and TensorBoard.

Stage 3 of docs/architecture.md. One JSON object per iteration is streamed to
``metrics.jsonl.partial`` and renamed to ``metrics.jsonl`` when the run ends; ``metrics.csv`` holds
the same columns, for DVC plots; ``tensorboard/`` gets the same scalars when
``pretrain.tensorboard`` is on. A resumed run first drops the lines of iterations its state does not
include (:func:`truncate_metrics`).
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Mapping

import pandas as pd

from pclbench.core.config import ConfigError
from pclbench.core.io import atomic_write_text

log = logging.getLogger(__name__)

PARTIAL_NAME = "metrics.jsonl.partial"


def write_metrics_csv(jsonl: Path, csv: Path) -> None:
    """``metrics.jsonl`` -> ``metrics.csv`` with the same columns (first-appearance order), atomically."""
    rows = [json.loads(line) for line in Path(jsonl).read_text().splitlines() if line.strip()]
    text = pd.DataFrame(rows).to_csv(index=False) if rows else ""
    atomic_write_text(Path(csv), text)


def truncate_metrics(partial: Path, iteration: int) -> None:
    """Keep the metrics lines of iterations <= ``iteration`` (those the checkpoint includes)."""
    if not partial.is_file():
        log.warning("%s is missing: the metrics of the epochs before the resume are lost", partial)
        return
    keep = []
    for line in partial.read_text().splitlines():
        try:
            if json.loads(line)["iteration"] <= iteration:
                keep.append(line)
        except (json.JSONDecodeError, KeyError, TypeError):
            break  # a line cut by the crash: everything after it is newer than the checkpoint
    atomic_write_text(partial, "".join(line + "\n" for line in keep))


def tensorboard_writer_class():
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as err:  # torch's wrapper needs the `tensorboard` package
        raise ConfigError("pretrain.tensorboard is true but the tensorboard package is not installed "
                          f"({err}); `pip install tensorboard` or set pretrain.tensorboard: false") from err
    return SummaryWriter


class MetricsLog:
    """Appends one record per iteration to ``out_dir/metrics.jsonl.partial`` (and TensorBoard scalars
    when ``tb_writer_cls`` is given); writes nothing when ``enabled`` is False (ranks other than 0).
    :meth:`finish` renames the file to ``metrics.jsonl`` and writes ``metrics.csv``."""

    def __init__(self, out_dir: Path, tb_writer_cls: Any | None, enabled: bool):
        self.out_dir = out_dir
        self.partial = out_dir / PARTIAL_NAME
        self.tb = tb_writer_cls(str(out_dir / "tensorboard")) if (enabled and tb_writer_cls is not None) else None
        self.fh = open(self.partial, "a") if enabled else None

    def write(self, record: Mapping[str, Any], values: Mapping[str, float], lr: float, iteration: int) -> None:
        if self.fh is not None:
            self.fh.write(json.dumps(record) + "\n")
        if self.tb is not None:
            for k, v in values.items():
                self.tb.add_scalar(k, v, iteration)
            self.tb.add_scalar("lr", lr, iteration)

    def flush(self) -> None:
        """Before each state save: the file holds every iteration the state includes."""
        if self.fh is not None:
            self.fh.flush()

    def close(self) -> None:
        if self.fh is not None:
            self.fh.close()
        if self.tb is not None:
            self.tb.close()

    def finish(self) -> None:
        """``metrics.jsonl.partial`` -> ``metrics.jsonl`` + ``metrics.csv`` (after :meth:`close`)."""
        os.replace(self.partial, self.out_dir / "metrics.jsonl")
        write_metrics_csv(self.out_dir / "metrics.jsonl", self.out_dir / "metrics.csv")
