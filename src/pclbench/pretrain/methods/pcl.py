"""PCL: Pose-disentangled Contrastive Learning for self-supervised facial representation.

Liu, Wang, Zhan, Feng, Liu, Chen, CVPR 2023, https://arxiv.org/abs/2211.13490
(docs/method.md). One iteration is THREE optimiser steps, in this order (2.7):

1. ``pfe`` (pose-disentangled decoding, PDD): encode the noisy image s and its noisy flip s^
   (2.1), orthogonalise face and pose head outputs (L_orth, 2.3) and reconstruct the CLEAN s, s^
   from flip-swapped codes (2.2): ``L_pfe = L_orth + w_rec (rec1 + rec2 + rec3 + rec4)`` (2.4).
2. ``face`` (code name "exp"): two DistanceCrop views (3.2) -> trunk -> face head -> exp_fc ->
   InfoNCE with in-batch Beta-mixed negatives (2.5), times the DWA face weight (2.8).
3. ``pose``: P images x (2 positive views + K views of the flipped image as negatives) (3.3)
   -> trunk -> pose head -> pose_fc -> InfoNCE (2.6), times the DWA pose weight.

Gradient flow (2.7): trunk <- all three steps; face head <- pfe + face; pose head <- pfe + pose;
decoder <- pfe; exp_fc <- face; pose_fc <- pose.

Faithful / fixed switches (docs/method.md §6, 7; the fixed behaviour is the default):

- ``pose_negatives``: ``fixed`` = each image's negatives are its own K flipped views (the paper's
  intent); ``faithful`` = the authors' collate-then-chunk indexing (2.6), see
  :func:`pose_negative_sets`.
- ``optimizer``: ``faithful`` = ``zero_grad(set_to_none=False)`` before each step, so after their
  first use every parameter gets an Adam update (zero gradient + coupled weight decay + momentum) in
  every step, also in steps that do not use it (2.7, bug 19); ``fixed`` = ``set_to_none=True``, so
  Adam skips the modules a step does not use.
- ``pose_fc_batches``: ``faithful`` = the authors' pose forward: positives (2P views) and negatives
  (PK views) go through encoder and pose_fc in two separate calls, so pose_fc's BatchNorm1d
  normalises each group with its own batch statistics and updates its running statistics twice per
  step, positives first (DreamMr/PCL Models/networks.py ``ExpPoseModel.forward``, state 'pose';
  Models/exppose.py ``forward``; docs/method.md §1.4, 2.6, 6.4);
  ``fixed`` = one call over all P (2 + K) views, one BatchNorm batch (the config comment argues why).
- ``pose_mixup_lambdas``: ``faithful`` = one Beta lambda per image and negative slot, shared by the
  image's two views (Models/exppose.py ``neg_inter_info_nce_loss_pose``; docs/method.md §2.6);
  ``fixed`` = one per anchor (view) and slot, as the face loss draws them (2.5).
- ``decoder_order``: ``faithful`` = the pfe step calls the decoder for rec2, rec1, rec3, rec4, the
  authors' order (Models/networks.py ``ExpPoseModel.forward``); ``fixed`` = rec1..rec4. Losses and
  gradients are the same; only the decoder's BatchNorm running statistics differ
  (:mod:`pclbench.pretrain.losses.reconstruction`).

Step-by-step entry points (for comparisons with any reference implementation): :meth:`PCL.pfe_step_views`,
:meth:`PCL.face_step_views` and :meth:`PCL.pose_step_views` run one step on precomputed inputs (noisy
images, views) and random draws (mixup lambdas and permutation), with or without the optimiser step.
:meth:`PCL.pfe_step` / :meth:`PCL.face_step` / :meth:`PCL.pose_step` (what ``train_iteration`` calls)
draw their random numbers and then run the same code: the pfe step calls :meth:`PCL.pfe_step_views`
itself; the face and pose steps share everything with the ``*_views`` methods except that their views
are computed inside the step's (compiled) loss function from the drawn parameters, so a compiled
step stays one graph with its augmentations.

Ablations (the paper's ablation table, docs/method.md §5.1; ``pcl.ablation``, every flag true = full PCL;
one named variant each in ``config/config.yaml`` ``variants``, e.g. ``pcl_wo_pdd``):

- ``pdd: false`` ("w/o PDD"): no pfe step at all, so no decoder, no reconstruction AND no L_orth
  (L_orth is part of the PDD objective L_pfe, 2.4); the ``pfe`` batch stream is not drawn.
- ``orth: false`` ("w/o L_orth"): L_pfe = w_rec * rec; L_orth is still computed and logged.
- ``flip_swap: false`` ("w/o flip-swap"): only the same-image terms rec3 + rec4 (each image from
  its own codes), not rescaled; rec1 and rec2 are not computed.
- ``pose_step: false`` ("w/o pose CL"): no pose step, no ``pose`` stream; DWA has one task left,
  so the face weight stays 1.
- "w/o DWA" = ``pcl.dwa.enabled: false``; "w/o mixup" = ``pcl.neg_alpha: 0`` (existing keys).

:func:`ablation_label` names a variant from its ``pcl`` section for the tables' footnotes.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Mapping

import torch
from torch import Tensor, nn

from pclbench.core.config import ConfigError, from_dict, setting
from pclbench.pretrain.distributed import all_gather_with_grad, world_size
from pclbench.pretrain.losses import DifferenceLoss, DynamicWeightAverage, FaceContrastiveLoss, PoseContrastiveLoss
from pclbench.pretrain.losses import AUTHORS_DECODER_ORDER, FLIP_SWAP_TERMS, flip_swap_reconstruction
from pclbench.models import ModelConfig, build_decoder, build_encoder_from_config, build_projection
from pclbench.models.heads import Decoder
from pclbench.pretrain.views import (ViewConfig, add_noise, apply_face_views, apply_pose_views, check_images, draw_face_views,
                     draw_pose_views, resize)
from pclbench.pretrain.methods.registry import METHODS
from pclbench.pretrain.methods.base import Method


@dataclass
class DWAConfig:
    """Dynamic Weight Averaging of the two contrastive losses (2.8)."""

    enabled: bool = setting("use_dwa; false: both weights 1. Paper true.")
    temperature: float = setting("dwa_T, the softmax temperature. Paper 2.0.", exclusiveMinimum=0)
    start: int = setting("Weights are 1 for epochs <= start. Paper 2 (the authors' warm_up - 1).")


@dataclass
class AblationConfig:
    """Section ``pcl.ablation``: which parts of PCL run (module docstring). All true = the paper's PCL."""

    pdd: bool = setting("false = w/o PDD: no pfe step (no decoder, reconstruction or L_orth; 2.1-2.4).")
    orth: bool = setting("false = w/o L_orth: L_pfe = w_rec * reconstruction (2.3).")
    flip_swap: bool = setting("false = w/o flip-swap: only rec3 + rec4, the own codes (2.2).")
    pose_step: bool = setting("false = w/o pose CL: no pose step (2.6); the face weight stays 1.")


# Footnote names of the switched-off parts, in the paper's order (docs/method.md §5.1).
_ABLATION_NAMES = (("pdd", "w/o PDD"), ("orth", "w/o L_orth"), ("flip_swap", "w/o flip-swap"),
                   ("pose_step", "w/o pose CL"))


def ablation_label(pcl_section: Mapping[str, Any]) -> str:
    """``"full"`` or the switched-off parts, e.g. ``"w/o PDD, w/o DWA"``, from a plain ``pcl`` section
    (a checkpoint's config). A section without ``ablation`` (older runs) is the full method."""
    abl = pcl_section.get("ablation") or {}
    off = [name for key, name in _ABLATION_NAMES if abl.get(key, True) is False]
    if (pcl_section.get("dwa") or {}).get("enabled", True) is False:
        off.append("w/o DWA")
    alpha = pcl_section.get("neg_alpha")
    if alpha is not None and alpha <= 0:
        off.append("w/o mixup")
    return ", ".join(off) if off else "full"


@dataclass
class PCLConfig:
    """PCL method (docs/method.md section 2). Paper values (configs/remote_PCL_vox.yaml, 2.10) in the descriptions."""

    noise_std: float = setting("Std of the Gaussian noise on the pfe inputs (2.1). Paper 0.4.", minimum=0)
    recon_weight: float = setting("w_rec of the 4 reconstruction terms (2.4). Paper 1.0, hard-coded.", minimum=0)
    temperature: float = setting("InfoNCE temperature of both contrastive losses (2.5, 2.6). Paper 0.07.",
                                 exclusiveMinimum=0)
    neg_alpha: float = setting("Beta(a, a) negative mixup; <= 0 disables it (2.5). Paper 1.6.")
    pose_batch: int = setting("Images per pose step (2.6). Paper 10, hard-coded.", minimum=1)
    n_negatives: int = setting("Flipped views per pose image (2.6). Paper 100, hard-coded.", minimum=1)
    pose_negatives: Literal["fixed", "faithful"] = setting(
        "fixed: own flipped views; faithful: the authors' collate-then-chunk indexing (2.6).")
    optimizer: Literal["fixed", "faithful"] = setting(
        "fixed: zero_grad(set_to_none=True); faithful: zeroed grads (set_to_none=False) keep unused modules "
        "moving (2.7).")
    pose_fc_batches: Literal["fixed", "faithful"] = setting(
        "fixed: one pose_fc call (one BatchNorm batch) over positives and negatives; faithful: the authors' two "
        "calls, positives then negatives (2.6).")
    pose_mixup_lambdas: Literal["fixed", "faithful"] = setting(
        "fixed: one Beta lambda per anchor and negative; faithful: one per image, shared by its two views (2.6).")
    decoder_order: Literal["fixed", "faithful"] = setting(
        "fixed: decoder calls rec1..rec4; faithful: the authors' rec2, rec1, rec3, rec4 (only BatchNorm running "
        "stats differ; 2.2).")
    dwa: DWAConfig = setting("Dynamic Weight Averaging of the two contrastive losses (2.8).")
    ablation: AblationConfig = setting("Which parts of PCL run (the paper's ablation table); all true = PCL. "
                                       "pclbench.pretrain.methods.pcl.AblationConfig.")

    @classmethod
    def from_config(cls, section: Mapping[str, Any]) -> "PCLConfig":
        return from_dict(cls, section, "pcl")


def pose_negative_sets(neg: Tensor, mode: str) -> Tensor:
    """Each pose image's negative set, ``neg (P, K, ...) -> (P, K, ...)`` (docs/method.md §2.6).

    ``neg[s, k]`` is the k-th flipped view of image s. ``fixed``: image s gets its own K views.
    ``faithful``: the authors collate K tensors of shape (P, ...), concatenate them (row ``k*P + s``)
    and split the rows into P contiguous chunks of K; chunk j is image j's set. With P = 10, K = 100
    chunk j holds views k = 10j..10j+9 of ALL ten images.
    """
    if mode == "fixed":
        return neg
    if mode == "faithful":
        p, k = neg.shape[:2]
        rows = neg.transpose(0, 1).reshape(k * p, *neg.shape[2:])  # row k*P + s = neg[s, k]
        return rows.reshape(p, k, *neg.shape[2:])  # chunk j = rows jK .. jK + K - 1
    raise ValueError(f"pose_negative_sets: mode must be 'fixed' or 'faithful', got {mode!r}")


class PCL(Method):
    """encoder (trunk + face head + pose head), exp_fc, pose_fc and the PDD decoder (docs/method.md §1)."""

    name = "pcl"
    trainable = True
    _compiled = False  # set by compile_modules
    config_sections = ("model", "pcl", "views")
    # "face" / "pose" are the DWA tasks; their unweighted CE epoch means drive the weights (2.8).
    _DWA_TASKS = ("face", "pose")

    def __init__(self, encoder: nn.Module, exp_fc: nn.Module, pose_fc: nn.Module, decoder: nn.Module,
                 cfg: PCLConfig, views: ViewConfig, img_size: int):
        super().__init__()
        if img_size != Decoder.out_size:
            raise ConfigError(f"pretrain.img_size: PCL reconstructs {Decoder.out_size} px images (the "
                              f"decoder's output size, docs/method.md §1.5), got {img_size}")
        self.encoder = encoder
        self.exp_fc = exp_fc
        self.pose_fc = pose_fc
        self.decoder = decoder
        self.cfg = cfg
        self.views = views
        self.img_size = img_size
        self.diff_loss = DifferenceLoss()
        self.face_loss = FaceContrastiveLoss(cfg.temperature, cfg.neg_alpha)
        self.pose_loss = PoseContrastiveLoss(cfg.temperature, cfg.neg_alpha,
                                             share_views=cfg.pose_mixup_lambdas == "faithful")
        self.dwa = DynamicWeightAverage(self._DWA_TASKS, cfg.dwa.temperature, cfg.dwa.start)

    # --- trainer interface ------------------------------------------------------------------------

    def batch_sizes(self, batch_size: int) -> dict[str, int]:
        sizes = {"pfe": batch_size, "face": batch_size, "pose": self.cfg.pose_batch}
        if not self.cfg.ablation.pdd:
            del sizes["pfe"]
        if not self.cfg.ablation.pose_step:
            del sizes["pose"]
        return sizes

    def _dwa_active(self) -> bool:
        # DWA balances the two contrastive losses; with the pose step off only one is left (weight 1).
        return self.cfg.dwa.enabled and self.cfg.ablation.pose_step

    def loss_weights(self, epoch: int) -> dict[str, float]:
        if not self._dwa_active():
            return {t: 1.0 for t in self._DWA_TASKS}
        return self.dwa.weights(epoch)

    def train_iteration(self, batches: Mapping[str, Tensor], optimizer: torch.optim.Optimizer,
                        scaler: torch.amp.GradScaler, epoch: int,
                        generator: torch.Generator) -> dict[str, Tensor]:
        w = self.loss_weights(epoch)
        out: dict[str, Tensor] = {}
        if self.cfg.ablation.pdd:
            out |= self.pfe_step(batches["pfe"], optimizer, scaler, generator)
        out |= self.face_step(batches["face"], w["face"], optimizer, scaler, generator)
        if self.cfg.ablation.pose_step:
            out |= self.pose_step(batches["pose"], w["pose"], optimizer, scaler, generator)
        dev = batches["face"].device
        out["w_face"] = torch.tensor(w["face"], device=dev)
        if self.cfg.ablation.pose_step:
            out["w_pose"] = torch.tensor(w["pose"], device=dev)
        return out

    def epoch_end(self, epoch: int, epoch_means: Mapping[str, float]) -> None:
        if self._dwa_active():
            self.dwa.update(epoch, {"face": epoch_means["loss_face"], "pose": epoch_means["loss_pose"]})

    def extra_state(self) -> dict[str, Any]:
        return {"dwa": self.dwa.state_dict()}

    def load_extra_state(self, state: Mapping[str, Any]) -> None:
        self.dwa.load_state_dict(state["dwa"])

    # --- the three steps --------------------------------------------------------------------------

    def pfe_step(self, x: Tensor, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
                 generator: torch.Generator) -> dict[str, Tensor]:
        """PDD step (2.1-2.4) on ``x (B, 3, S, S)`` in [0, 1]: draws the noise, then :meth:`pfe_step_views`."""
        x = resize(x, self.img_size)  # (B, 3, 64, 64): clean target s
        x_flip = x.flip(-1)  # (B, 3, 64, 64): clean target s^
        # Independent noise on s and s^ (2.1).
        noisy = add_noise(torch.cat([x, x_flip], dim=0), self.cfg.noise_std, generator)  # (2B, 3, 64, 64)
        return self.pfe_step_views(noisy, x, x_flip, optimizer, scaler)[1]

    def pfe_step_views(self, noisy: Tensor, x: Tensor, x_flip: Tensor,
                       optimizer: torch.optim.Optimizer | None = None,
                       scaler: torch.amp.GradScaler | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        """The pfe step on precomputed inputs: ``noisy (2B, 3, 64, 64)`` = [s + n; s^ + n'] (the
        encoder inputs, 2.1) and the clean targets ``x, x_flip (B, 3, 64, 64)`` (s, s^).

        Returns ``(L_pfe, logs)``. With ``optimizer``: one optimiser step exactly as in training
        (``pcl.optimizer`` zero_grad mode, ``scaler``; None = no loss scaling) and L_pfe detached.
        Without: no backward and no step; L_pfe keeps its graph (the caller may backward it).
        The BatchNorm running statistics are updated either way (training-mode forward).
        """
        b = x.shape[0]
        if x.dim() != 4 or x.shape != x_flip.shape or tuple(noisy.shape) != (2 * b, *x.shape[1:]) \
                or x.shape[-1] != self.img_size:
            raise ValueError(f"pfe_step_views: expected noisy (2B, 3, {self.img_size}, {self.img_size}) and x, "
                             f"x_flip (B, 3, {self.img_size}, {self.img_size}); got {tuple(noisy.shape)}, "
                             f"{tuple(x.shape)}, {tuple(x_flip.shape)}")
        loss, logs = self._pfe_loss(noisy, x, x_flip)
        return self._finish(loss, logs, optimizer, scaler)

    def _pfe_loss(self, noisy: Tensor, x: Tensor, x_flip: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """L_pfe of the noisy pair ``noisy (2B, 3, 64, 64)`` = [s + n; s^ + n'] and the clean targets.

        Free of random draws (the noise is an input), so :meth:`compile_modules` can compile the
        whole forward and backward of the step into one graph."""
        b = x.shape[0]
        with self._autocast(x):
            # One encoder pass over the 2B stacked images; the authors make two (s, then s^). The
            # FaceCycle encoder has no normalisation layer (docs/method.md §1.1), so the two are equal
            # (an encoder with BatchNorm, e.g. the ResNets, sees one batch of 2B here).
            _, face, pose = self.encoder.forward_maps(noisy)  # (2B, C, h, w) each
            face, pose = face.flatten(1), pose.flatten(1)  # (2B, D)
            e_n, e_f = face[:b], face[b:]
            p_n, p_f = pose[:b], pose[b:]
            # L_orth is batch-coupled (centred over the batch, X^T Y): under DDP over the GLOBAL batch,
            # as the authors' DataParallel computed it; identity with one process.
            g = all_gather_with_grad
            orth = self.diff_loss(g(e_n), g(p_n)) + self.diff_loss(g(e_f), g(p_f))
            # ablation "w/o flip-swap": each image from its own codes only (rec3, rec4). The tuple is
            # also the decoder call order (pcl.decoder_order).
            if not self.cfg.ablation.flip_swap:
                terms = ("rec3", "rec4")
            elif self.cfg.decoder_order == "faithful":
                terms = AUTHORS_DECODER_ORDER
            else:
                terms = tuple(FLIP_SWAP_TERMS)
            rec = flip_swap_reconstruction(self.decoder, e_n, p_n, e_f, p_f, x, x_flip, terms=terms)
            loss = self.cfg.recon_weight * rec["total"]
            if self.cfg.ablation.orth:
                loss = loss + orth
        return loss, {"loss_pfe": loss.detach(), "loss_orth": orth.detach(),
                      **{f"loss_{k}": v.detach() for k, v in rec.items() if k != "total"}}

    def face_step(self, x: Tensor, weight: float, optimizer: torch.optim.Optimizer,
                  scaler: torch.amp.GradScaler, generator: torch.Generator) -> dict[str, Tensor]:
        """Face-aware contrastive step (2.5, 3.2) on ``x (B, 3, H, W)`` at the shard's resolution."""
        x = check_images(x, generator, "face_step")
        # Every random number first, in the order of face_views then the loss (views: crop boxes and
        # photometric parameters; mixup for the GLOBAL batch of negatives under DDP).
        view_draws = draw_face_views(x.shape, self.views, generator, x.device)
        draws = self.face_loss.draw(x.shape[0] * world_size(), generator, x.device)
        return self._face_update(x, view_draws, draws, weight, optimizer, scaler)[1]

    def face_step_views(self, v1: Tensor, v2: Tensor, weight: float, draws: tuple[Tensor, Tensor] | None,
                        optimizer: torch.optim.Optimizer | None = None,
                        scaler: torch.amp.GradScaler | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        """The face step on precomputed views ``v1, v2 (B, 3, 64, 64)`` (the two DistanceCrop views of
        each image, 3.2) and mixup ``draws`` = ``(lam (2B, 2B - 2), perm (2B - 2,))`` over the GLOBAL
        batch (``self.face_loss.draw(B * world_size, ...)``; None only when mixup is off).

        Returns ``(weight * L_face, logs)``; ``optimizer`` / ``scaler`` as in :meth:`pfe_step_views`.
        """
        self._check_views("face_step_views", v1, v2.shape == v1.shape and v1.dim() == 4)
        self._check_draws("face_step_views", draws)
        return self._face_update((v1, v2), None, draws, weight, optimizer, scaler)

    def _face_update(self, src, view_draws, draws, weight, optimizer, scaler) -> tuple[Tensor, dict[str, Tensor]]:
        ce = self._face_loss(src, view_draws, draws)
        return self._finish(weight * ce, {"loss_face": ce.detach()}, optimizer, scaler)

    def _face_loss(self, src: Tensor | tuple[Tensor, Tensor], view_draws: Mapping[str, Any] | None,
                   draws: tuple[Tensor, Tensor] | None) -> Tensor:
        """Unweighted L_face: the two views (3.2) -> trunk -> face head -> exp_fc -> InfoNCE. ``src``
        is the images ``(B, 3, H, W)`` and ``view_draws`` their view parameters, or ``src`` is the pair
        of views and ``view_draws`` None. No random draws inside (they are arguments)."""
        if view_draws is None:
            v1, v2 = src  # (B, 3, 64, 64) each
        else:
            v1, v2 = apply_face_views(src, view_draws, self.views, self.img_size)  # (B, 3, 64, 64) each
        b = v1.shape[0]
        with self._autocast(v1):
            trunk = self.encoder.forward_trunk(torch.cat([v1, v2], dim=0))  # (2B, C, h, w)
            # one exp_fc call, one BatchNorm batch over both views: as the authors (Models/networks.py)
            z = self.exp_fc(self.encoder.forward_face(trunk).flatten(1))  # (2B, out_dim)
            # In-batch negatives over the GLOBAL batch under DDP (identity with one process); the
            # gather scales gradients by the world size to cancel the trainer's averaging.
            z1, z2 = all_gather_with_grad(z[:b]), all_gather_with_grad(z[b:])  # (W B, out_dim) each
            return self.face_loss(z1, z2, draws=draws)

    def pose_step(self, x: Tensor, weight: float, optimizer: torch.optim.Optimizer,
                  scaler: torch.amp.GradScaler, generator: torch.Generator) -> dict[str, Tensor]:
        """Pose contrastive step (2.6, 3.3) on ``x (P, 3, H, W)``; only trunk, pose head and pose_fc."""
        x = check_images(x, generator, "pose_step")
        p, k = x.shape[0], self.cfg.n_negatives
        view_draws = draw_pose_views(p, k, self.views, generator, x.device)
        draws = self.pose_loss.draw(p, k, generator, x.device)
        return self._pose_update(x, view_draws, draws, weight, optimizer, scaler)[1]

    def pose_step_views(self, pos: Tensor, neg: Tensor, weight: float, draws: tuple[Tensor, Tensor] | None,
                        optimizer: torch.optim.Optimizer | None = None,
                        scaler: torch.amp.GradScaler | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        """The pose step on precomputed views: ``pos (P, 2, 3, 64, 64)`` (two views of each image),
        ``neg (P, K, 3, 64, 64)`` (``neg[s, k]`` = the k-th view of image s's flip; ``pcl.pose_negatives``
        then decides which of them each image's loss sees) and mixup ``draws`` = ``(lam, perm (K,))``
        with ``lam (2P, K)`` (``pose_mixup_lambdas: fixed``) or ``(P, K)`` (``faithful``), as
        ``self.pose_loss.draw(P, K, ...)`` makes them; None only when mixup is off.

        Returns ``(weight * L_pose, logs)``; ``optimizer`` / ``scaler`` as in :meth:`pfe_step_views`.
        """
        ok = pos.dim() == 5 and pos.shape[1] == 2 and neg.dim() == 5 and neg.shape[0] == pos.shape[0] \
            and neg.shape[2:] == pos.shape[2:]
        self._check_views("pose_step_views", pos, ok)
        self._check_draws("pose_step_views", draws)
        return self._pose_update((pos, neg), None, draws, weight, optimizer, scaler)

    def _pose_update(self, src, view_draws, draws, weight, optimizer, scaler) -> tuple[Tensor, dict[str, Tensor]]:
        ce = self._pose_loss(src, view_draws, draws)
        return self._finish(weight * ce, {"loss_pose": ce.detach()}, optimizer, scaler)

    def _pose_loss(self, src: Tensor | tuple[Tensor, Tensor], view_draws: Mapping[str, Tensor] | None,
                   draws: tuple[Tensor, Tensor] | None) -> Tensor:
        """Unweighted L_pose: P x (2 positives + K flipped negatives) views (3.3) -> trunk -> pose
        head -> pose_fc -> InfoNCE. ``src`` is the images ``(P, 3, H, W)`` and ``view_draws`` their
        view parameters, or ``src`` is ``(pos, neg)`` and ``view_draws`` None. No random draws inside."""
        if view_draws is None:
            pos, neg = src  # (P, 2, 3, S, S), (P, K, 3, S, S)
        else:
            pos, neg = apply_pose_views(src, self.cfg.n_negatives, view_draws, self.views, self.img_size)
        p, k = neg.shape[:2]
        with self._autocast(pos):
            if self.cfg.pose_fc_batches == "faithful":
                # The authors' two forward passes, positives then negatives: two BatchNorm batches
                # in pose_fc and two running-statistics updates (module docstring).
                z_pos = self._pose_embed(pos.flatten(0, 1))  # (2P, out_dim)
                z_neg = self._pose_embed(neg.flatten(0, 1))  # (P K, out_dim)
            else:
                z = self._pose_embed(torch.cat([pos.flatten(0, 1), neg.flatten(0, 1)], dim=0))  # (P (2 + K), out_dim)
                z_pos, z_neg = z[: 2 * p], z[2 * p:]
            z_pos = z_pos.reshape(p, 2, -1)  # (P, 2, out_dim)
            z_neg = pose_negative_sets(z_neg.reshape(p, k, -1), self.cfg.pose_negatives)  # (P, K, out_dim)
            return self.pose_loss(z_pos, z_neg, draws=draws)

    def _pose_embed(self, imgs: Tensor) -> Tensor:
        """``imgs (N, 3, S, S)`` -> trunk -> pose head -> pose_fc: ``(N, out_dim)``, one BatchNorm batch."""
        return self.pose_fc(self.encoder.forward_pose(self.encoder.forward_trunk(imgs)).flatten(1))

    def _keep(self, logs: dict[str, Tensor]) -> dict[str, Tensor]:
        # Outputs of a CUDA-graph replay (compile mode reduce-overhead) are overwritten by the next
        # replay; the trainer keeps the logged values longer, so they are copied (scalars: free).
        return {k: v.clone() for k, v in logs.items()} if self._compiled else logs

    def _finish(self, loss: Tensor, logs: dict[str, Tensor], optimizer: torch.optim.Optimizer | None,
                scaler: torch.amp.GradScaler | None) -> tuple[Tensor, dict[str, Tensor]]:
        """The end of every step: the optimiser step on ``loss`` (when ``optimizer`` is given)."""
        if optimizer is not None:
            if scaler is None:
                scaler = torch.amp.GradScaler(loss.device.type, enabled=False)
            self._step(loss, optimizer, scaler)
            loss = loss.detach()
            if self._compiled:
                loss = loss.clone()
        return loss, self._keep(logs)

    def _check_views(self, who: str, v: Tensor, ok: bool) -> None:
        s = self.img_size
        if not ok or tuple(v.shape[-3:]) != (3, s, s):
            raise ValueError(f"{who}: views must be float images of {s} x {s} px in the documented shapes; "
                             f"got {tuple(v.shape)}")

    def _check_draws(self, who: str, draws) -> None:
        if draws is None and self.cfg.neg_alpha > 0:
            raise ValueError(f"{who}: mixup is on (pcl.neg_alpha > 0): pass its draws (lam, perm), e.g. "
                             "from self.face_loss.draw / self.pose_loss.draw")

    def compile_modules(self, mode: str | None = "default", **compile_kwargs) -> list[str]:
        """Compile each step's forward pass AND loss as one graph (``torch.compile(mode=mode)``).

        The steps draw their random numbers (views, noise, mixup) before calling these functions,
        so the compiled graphs are deterministic functions of their inputs; with
        ``mode="reduce-overhead"`` forward and backward are replayed as CUDA graphs. Parameters and
        state_dict keys are untouched.
        """
        for name in ("_pfe_loss", "_face_loss", "_pose_loss"):
            setattr(self, name, torch.compile(getattr(self, name), mode=mode, **compile_kwargs))
        self._compiled = True
        return ["_pfe_loss", "_face_loss", "_pose_loss"]

    @torch.no_grad()
    def swap_grid(self, x: Tensor) -> Tensor:
        """Flip-swap reconstructions of ``x (R, 3, H, W)`` in [0, 1] for a figure (docs/method.md §2.2).

        Returns ``(R, 6, 3, 64, 64)`` in [0, 1]: the image s, its flip s^, and the clean-input
        decodings D(e_f + p_n), D(e_n + p_f), D(e_n + p_n), D(e_f + p_f) (targets s, s^, s, s^).
        No noise is added: the figure shows what the codes of the clean images carry.
        """
        x = resize(x, self.img_size)  # (R, 3, 64, 64)
        x_flip = x.flip(-1)
        r = x.shape[0]
        _, face, pose = self.encoder.forward_maps(torch.cat([x, x_flip], dim=0))  # (2R, C, h, w) each
        face, pose = face.flatten(1).float(), pose.flatten(1).float()  # (2R, D)
        codes = {"e_n": face[:r], "e_f": face[r:], "p_n": pose[:r], "p_f": pose[r:]}
        dec = [self.decoder(codes[f] + codes[p]).float().clamp(0, 1)
               for f, p, _ in FLIP_SWAP_TERMS.values()]  # rec1..rec4 order
        return torch.stack([x, x_flip, *dec], dim=1)  # (R, 6, 3, 64, 64)

    # --- helpers ----------------------------------------------------------------------------------

    def _step(self, loss: Tensor, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler) -> None:
        # faithful (torch 1.7 semantics): grads that exist are zeroed, not freed, so Adam updates the
        # parameter anyway; fixed: freed, so Adam skips parameters this step does not reach.
        super()._step(loss, optimizer, scaler, set_to_none=self.cfg.optimizer == "fixed")


@METHODS.register("pcl")
def build_pcl(config: Mapping[str, Any], model_cfg: ModelConfig, img_size: int) -> PCL:
    """PCL from the config sections ``pcl`` and ``views`` and the parsed ``model`` section."""
    if "pcl" not in config:
        raise ConfigError("missing section pcl")
    if "views" not in config:
        raise ConfigError("missing section views")
    cfg = PCLConfig.from_config(config["pcl"])
    views = ViewConfig.from_config(config["views"])
    encoder = build_encoder_from_config(model_cfg)
    d = encoder.feature_dims(img_size)
    # Module creation order fixes which random numbers initialise what: encoder first, so the
    # `random` baseline built from the same seed is exactly PCL's starting encoder.
    exp_fc = build_projection(model_cfg, d["face"])
    pose_fc = build_projection(model_cfg, d["pose"])
    decoder = build_decoder(model_cfg, d["face"])
    return PCL(encoder, exp_fc, pose_fc, decoder, cfg, views, img_size)
