"""Flip-swap reconstruction of the pose-disentangled decoding (PDD) step (docs/method.md §2.2, 2.4).

With s the image, s^ its horizontal flip, (e_n, p_n) and (e_f, p_f) their face / pose head outputs
and D the decoder (which L2-normalises its input, see :class:`pclbench.models.heads.Decoder`):

- rec1 = |D(e_f + p_n) - s|_1   (face code of the flip + pose code of s gives s)
- rec2 = |D(e_n + p_f) - s^|_1
- rec3 = |D(e_n + p_n) - s|_1
- rec4 = |D(e_f + p_f) - s^|_1

Each term is a mean absolute error. The targets are the CLEAN images in [0, 1] while the decoder
ends with Tanh in [-1, 1]: this is faithful to the authors, who compare them directly (the decoder
simply never uses its negative range). The decoder is called once per term, so its BatchNorm
normalises each call's B codes with their own batch statistics, as in the authors' code.

Call order. The calls are made in the order of ``terms``: rec1, rec2, rec3, rec4 by default. The
authors' model calls the decoder on D(e_n + p_f) first, then D(e_f + p_n), D(e_n + p_n),
D(e_f + p_f), i.e. rec2, rec1, rec3, rec4 (DreamMr/PCL Models/networks.py ``ExpPoseModel.forward``,
state 'pfe'; docs/method.md §2.2 and §6.4): :data:`AUTHORS_DECODER_ORDER`.
The losses and gradients do not depend on the order (training-mode BatchNorm uses batch statistics);
the decoder's BatchNorm RUNNING statistics do, because each call updates them with momentum
(PyTorch ``BatchNorm2d`` docs: ``running = (1 - momentum) running + momentum batch_stat``).
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from pclbench.pretrain.losses.info_nce import loss_float


# term -> (face code, pose code, target): "n" = the image s, "f" = its flip s^ (the table above).
FLIP_SWAP_TERMS: dict[str, tuple[str, str, str]] = {
    "rec1": ("e_f", "p_n", "s"),
    "rec2": ("e_n", "p_f", "s_hat"),
    "rec3": ("e_n", "p_n", "s"),
    "rec4": ("e_f", "p_f", "s_hat"),
}
# The decoder call order of the authors' code (module docstring; ``pcl.decoder_order: faithful``).
AUTHORS_DECODER_ORDER: tuple[str, ...] = ("rec2", "rec1", "rec3", "rec4")


def flip_swap_reconstruction(decoder: nn.Module, e_n: Tensor, p_n: Tensor, e_f: Tensor, p_f: Tensor,
                             x: Tensor, x_flip: Tensor,
                             terms: tuple[str, ...] = tuple(FLIP_SWAP_TERMS)) -> dict[str, Tensor]:
    """Return ``{<term>: L1, ..., "total"}`` for ``terms`` (default all four), ``total`` = their sum.

    The decoder is called in the order of ``terms`` (see the module docstring); the returned terms
    and ``total`` are in rec1..rec4 order whatever the call order.

    ``e_*, p_* (B, D)`` (or head maps, flattened here); ``x, x_flip (B, 3, 64, 64)`` clean, in [0, 1]
    and of the decoder's output size (resize them first when pretraining at another size).
    ``terms=("rec3", "rec4")`` is the "w/o flip-swap" ablation: each image from its own codes only.
    """
    unknown = [t for t in terms if t not in FLIP_SWAP_TERMS]
    if unknown or not terms or len(set(terms)) != len(terms):
        raise ValueError(f"flip_swap_reconstruction: terms must be a non-empty subset of "
                         f"{list(FLIP_SWAP_TERMS)} (each once), got {list(terms)}")
    codes = {"e_n": e_n, "p_n": p_n, "e_f": e_f, "p_f": p_f}
    shapes = {k: tuple(v.flatten(1).shape) for k, v in codes.items()}
    if len(set(shapes.values())) != 1:
        raise ValueError(f"flip_swap_reconstruction: the four codes must have one shape, got {shapes}")
    if x.shape != x_flip.shape or x.dim() != 4 or x.shape[0] != e_n.shape[0]:
        raise ValueError(f"flip_swap_reconstruction: x and x_flip must be (B, 3, H, W) with B = "
                         f"{e_n.shape[0]}, got {tuple(x.shape)} and {tuple(x_flip.shape)}")
    codes = {k: v.flatten(1) for k, v in codes.items()}  # (B, D) each
    targets = {"s": x, "s_hat": x_flip}
    called: dict[str, Tensor] = {}
    for name in terms:  # the decoder call order
        face, pose, target_name = FLIP_SWAP_TERMS[name]
        target = targets[target_name]
        recon = decoder(codes[face] + codes[pose])  # (B, 3, 64, 64) in [-1, 1]
        if recon.shape != target.shape:
            raise ValueError(f"flip_swap_reconstruction: decoder output {tuple(recon.shape)} does not match "
                             f"the target images {tuple(target.shape)}; resize the targets to the decoder size")
        called[name] = F.l1_loss(loss_float(recon), loss_float(target))
    out = {name: called[name] for name in FLIP_SWAP_TERMS if name in called}  # rec1..rec4 order
    out["total"] = sum(out.values())
    return out


class FlipSwapReconstructionLoss(nn.Module):
    """Module form of :func:`flip_swap_reconstruction` that holds no parameters (the decoder is passed in)."""

    def forward(self, decoder: nn.Module, e_n: Tensor, p_n: Tensor, e_f: Tensor, p_f: Tensor, x: Tensor,
                x_flip: Tensor) -> dict[str, Tensor]:
        return flip_swap_reconstruction(decoder, e_n, p_n, e_f, p_f, x, x_flip)
