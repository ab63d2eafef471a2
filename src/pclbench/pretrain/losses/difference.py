"""Orthogonalising regulation L_orth: the Domain-Separation-Networks difference loss (docs/method.md §2.3).

Pushes the face-aware features e and the pose-related features p of a batch towards uncorrelated
feature dimensions, ``L(X, Y) = mean over the D_x x D_y entries of (X^T Y)^2`` after centring each
over the batch and dividing each row by its (DETACHED) L2 norm + 1e-6, so the gradient flows only
through the numerator. PCL uses ``L(e_n, p_n) + L(e_f, p_f)`` on the 2048-d head outputs.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from pclbench.pretrain.losses.info_nce import loss_float

_EPS = 1e-6  # added to the detached row norm (2.3)


def _centre_and_scale(x: Tensor) -> Tensor:
    x = loss_float(x.flatten(1))  # float32 under autocast; float64 stays float64
    x = x - x.mean(dim=0, keepdim=True)  # (B, D), centred over the batch
    return x / (x.norm(dim=1, keepdim=True).detach() + _EPS)


def difference_loss(x: Tensor, y: Tensor) -> Tensor:
    """``x (B, Dx)``, ``y (B, Dy)`` -> scalar ``||X^T Y||_F^2 / (Dx Dy)``.

    Computed as ``sum((X X^T) * (Y Y^T))``, which equals ``||X^T Y||_F^2`` exactly but costs
    O(B^2 D) instead of O(B D^2) (B = 256 << D = 2048 in the paper).
    """
    if x.dim() < 2 or y.dim() < 2 or x.shape[0] != y.shape[0]:
        raise ValueError(f"difference_loss: x and y must be (B, D) with the same B, got {tuple(x.shape)} "
                         f"and {tuple(y.shape)}")
    with torch.autocast(device_type=x.device.type, enabled=False):  # at least float32 even under AMP
        xn, yn = _centre_and_scale(x), _centre_and_scale(y)
        frob2 = ((xn @ xn.T) * (yn @ yn.T)).sum()
        return frob2 / (xn.shape[1] * yn.shape[1])


class DifferenceLoss(nn.Module):
    """Module form of :func:`difference_loss` (no hyper-parameters: the 1e-6 is part of the definition)."""

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        return difference_loss(x, y)
