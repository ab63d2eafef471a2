"""PCL's losses, one per module (docs/method.md §2); SimCLR's NT-Xent is PCL's face loss without mixup."""
from __future__ import annotations

from pclbench.pretrain.losses.difference import DifferenceLoss, difference_loss
from pclbench.pretrain.losses.dwa import DynamicWeightAverage
from pclbench.pretrain.losses.info_nce import (FaceContrastiveLoss, PoseContrastiveLoss, draw_mixup,
                                               face_contrastive_loss, info_nce_with_negatives, loss_float,
                                               mix_negatives, nt_xent, pose_contrastive_loss, sample_beta)
from pclbench.pretrain.losses.reconstruction import (AUTHORS_DECODER_ORDER, FLIP_SWAP_TERMS, FlipSwapReconstructionLoss,
                             flip_swap_reconstruction)

__all__ = [
    "DifferenceLoss", "difference_loss", "DynamicWeightAverage", "FaceContrastiveLoss",
    "PoseContrastiveLoss", "draw_mixup", "face_contrastive_loss", "info_nce_with_negatives",
    "mix_negatives", "nt_xent", "pose_contrastive_loss", "sample_beta", "FlipSwapReconstructionLoss",
    "flip_swap_reconstruction", "FLIP_SWAP_TERMS", "AUTHORS_DECODER_ORDER", "loss_float",
]
