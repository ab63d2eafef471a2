"""The interface between a pretraining method and the trainer (:mod:`pclbench.pretrain.trainer`).

The trainer owns data, devices, the optimiser, the schedule, logging and checkpoints; a method owns
its networks, its losses and its optimiser steps. PCL makes three optimiser steps per iteration
(docs/method.md §2.7), so ``train_iteration`` receives the optimiser rather than returning a loss.
"""
from __future__ import annotations

import contextlib
from typing import Any, Mapping

import torch
from torch import Tensor, nn


class Method(nn.Module):
    """A pretraining method.

    Attributes:
        encoder: the network whose features are evaluated (``forward_features``, ``spec``).
        trainable: False for methods that are evaluated at initialisation (no optimiser, no steps).
        img_size: the input size (pixels) the method trains at. Batches arrive at the shard's
            resolution; the method resizes them (PCL crops its face views BEFORE resizing, 3.2).
        amp_dtype: set by the trainer: autocast dtype of the forward passes (None = float32).
    """

    name: str
    # Config sections whose values define the run (a resume must not change them); plus `pretrain`.
    config_sections: tuple[str, ...] = ("model",)
    encoder: nn.Module
    trainable: bool = True
    img_size: int
    amp_dtype: torch.dtype | None = None

    def batch_sizes(self, batch_size: int) -> dict[str, int]:
        """Images per iteration for each named batch stream, e.g. ``{"pfe": 256, "pose": 10}``.

        The trainer draws each stream from its own shuffled one-frame-per-video index stream.
        ``batch_size`` is ``pretrain.batch_size``; one epoch is ``floor(n_videos / batch_size)``
        iterations.
        """
        raise NotImplementedError

    def parameter_groups(self) -> list[dict[str, Any]]:
        """Parameter groups for the optimiser (default: every parameter, one group)."""
        return [{"params": [p for p in self.parameters() if p.requires_grad]}]

    def train_iteration(self, batches: Mapping[str, Tensor], optimizer: torch.optim.Optimizer,
                        scaler: torch.amp.GradScaler, epoch: int,
                        generator: torch.Generator) -> dict[str, Tensor]:
        """One iteration: the method's optimiser step(s) on ``batches`` (float in [0, 1], on device).

        Returns detached scalar tensors to log (losses, loss weights). ``epoch`` is 1-based.
        ``generator`` lives on the training device and drives every random view / noise draw.
        """
        raise NotImplementedError

    def _autocast(self, x: Tensor):
        """Autocast context for the forward passes on ``x``'s device (none when ``amp_dtype`` is None)."""
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=x.device.type, dtype=self.amp_dtype)

    def _step(self, loss: Tensor, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
              set_to_none: bool = True) -> None:
        """One optimiser step on ``loss``. ``set_to_none=True`` frees the previous gradients, so
        parameters this loss does not reach are skipped by the optimiser."""
        optimizer.zero_grad(set_to_none=set_to_none)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    def compile_modules(self, mode: str | None = "default", **compile_kwargs) -> list[str]:
        """``torch.compile`` (in place, ``nn.Module.compile``) every network the steps call.

        The steps call an encoder's stages through ``forward_trunk`` / ``forward_face`` / ... rather
        than its ``forward``, so an encoder (anything with ``forward_trunk``) has each of its children
        compiled; every other child with parameters (projections, predictors, decoder, momentum
        copies) is compiled whole. Parameter-free children (losses) stay eager. Returns the names
        compiled. In-place compilation keeps ``state_dict`` keys, so checkpoints do not change.
        ``compile_kwargs`` go to ``torch.compile`` (e.g. ``backend``). A method may compile whole
        steps instead (PCL does).
        """
        done = []
        for name, child in self.named_children():
            if hasattr(child, "forward_trunk"):
                for sub_name, sub in child.named_children():
                    sub.compile(mode=mode, **compile_kwargs)
                    done.append(f"{name}.{sub_name}")
            elif any(True for _ in child.parameters()):
                child.compile(mode=mode, **compile_kwargs)
                done.append(name)
        return done

    def epoch_end(self, epoch: int, epoch_means: Mapping[str, float]) -> None:
        """Called after each epoch with the epoch means of the logged values (DWA update)."""

    def extra_state(self) -> dict[str, Any]:
        """Non-parameter state to checkpoint (plain containers / tensors only)."""
        return {}

    def load_extra_state(self, state: Mapping[str, Any]) -> None:
        """Inverse of :meth:`extra_state`."""
