"""``pclbench import-official``: an authors' checkpoint (``best.pth``) -> a pclbench checkpoint.

docs/method.md §1.8 and 2.9. The authors' layout and the strict key mapping onto our encoder live in
:mod:`pclbench.pretrain.official`; the pclbench format in :mod:`pclbench.pretrain.checkpoint`. This module
joins the two (it imports both; neither imports it).
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Mapping

from torch import Tensor

from pclbench.models import ModelConfig, build_projection
from pclbench.pretrain.checkpoint import FORMAT, safe_torch_load, save_checkpoint
from pclbench.pretrain.official import (AuthorsCheckpoint, encoder_from_authors, is_authors_checkpoint,
                                        map_projection_state, split_authors_state)


def read_authors_file(path: Path | str) -> tuple[AuthorsCheckpoint, dict]:
    """``torch.load(weights_only=True)`` an authors' file (a dict of tensors + int epoch).

    A file torch refuses (e.g. one whose pickle references ``os.system``) raises
    :class:`pclbench.pretrain.checkpoint.CheckpointError` with one line naming the blocked global
    (:func:`pclbench.pretrain.checkpoint.safe_torch_load`), not torch's raw UnpicklingError.
    """
    path = Path(path)
    obj = safe_torch_load(path, "cpu", what="authors' checkpoint")
    if not is_authors_checkpoint(obj):
        raise ValueError(f"{path} is not a checkpoint of the authors' PCL code (expected "
                         f"{{'epoch', 'state_dict': {{'module.encoder.*', ...}}}}, docs/method.md §2.9)")
    return split_authors_state(obj, str(path)), obj


def sha256_file(path: Path | str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def import_official(src: Path | str, dst: Path | str, config: Mapping[str, Any]) -> dict:
    """Convert an authors' checkpoint into a pclbench checkpoint (format ``pclbench-checkpoint/1``).

    The result has method ``pcl``, ``finished=True``, the encoder spec ``facecycle`` with the width
    inferred from conv1, ``encoder_state`` strictly mapped, and ``imported_from`` = {source path,
    sha256, epoch, notes}. ``model`` holds the encoder (``encoder.*``) and, when their shapes fit the
    projection MLP that ``config``'s ``model.projection`` builds for 64 px heads (the authors' training
    size, 2.10), ``exp_fc.*`` / ``pose_fc.*``; otherwise they are dropped and a note says so. The
    decoder is always dropped (it is not needed for evaluation, 1.8). There is no optimizer, scheduler
    or RNG state: the file cannot resume training. ``config`` holds only the ``model`` section (with
    the inferred encoder and width); it has no ``pcl`` section because the authors' training
    options are those of their code, not a pclbench variant. Returns the ``imported_from`` record.
    """
    src, dst = Path(src), Path(dst)
    ck, _ = read_authors_file(src)
    encoder = encoder_from_authors(ck, str(src))
    width = encoder.width
    notes: list[str] = []
    model_section = dict(config["model"])
    model_section.update(encoder="facecycle", width=width)
    mcfg = ModelConfig.from_config(model_section)
    model: dict[str, Tensor] = {f"encoder.{k}": v for k, v in encoder.state_dict().items()}
    in_dim = encoder.feature_dims(64)["face"]
    for name, part in (("exp_fc", ck.exp_fc), ("pose_fc", ck.pose_fc)):
        mapped = map_projection_state(part) if part else None
        target = build_projection(mcfg, in_dim).state_dict()
        if mapped is not None and all(tuple(mapped[k].shape) == tuple(v.shape) for k, v in target.items()):
            model.update({f"{name}.{k}": v for k, v in mapped.items()})
        elif not part:
            notes.append(f"{name}: not in the source file")
        else:
            shapes = {k: tuple(v.shape) for k, v in part.items()}
            notes.append(f"{name}: dropped; its keys/shapes {shapes} do not fit model.projection "
                         f"({in_dim} -> {mcfg.projection.hidden_dim} -> {mcfg.projection.out_dim})")
    if ck.decoder:
        notes.append(f"decoder: dropped ({len(ck.decoder)} tensors; not used for evaluation)")
    record = {"path": str(src.resolve()), "sha256": sha256_file(src), "epoch": ck.epoch,
              "data_parallel": ck.data_parallel, "notes": notes}
    state = {"format": FORMAT, "method": "pcl", "encoder": encoder.spec,
             "encoder_state": encoder.state_dict(), "model": model, "optimizer": None, "scheduler": None,
             "scaler": None, "extra": {}, "rng": {},
             # The authors' epoch value is kept as saved (an int, or 0 when the file had none).
             "epoch": ck.epoch if ck.epoch is not None else 0, "iteration": 0, "finished": True,
             "config": {"model": model_section}, "imported_from": record}
    save_checkpoint(dst, state)
    return record
