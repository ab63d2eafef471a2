"""PCL: Pose-disentangled Contrastive Learning for self-supervised facial representation.

Liu, Wang, Zhan, Feng, Liu, Chen, CVPR 2023, https://arxiv.org/abs/2211.13490
(method doc: docs/pcl-method.md). One iteration is THREE optimiser steps, in this order (2.7):

1. ``pfe`` (pose-disentangled decoding, PDD): encode the noisy image s and its noisy flip s^
   (2.1), orthogonalise face and pose head outputs (L_orth, 2.3) and reconstruct the CLEAN s, s^
   from flip-swapped codes (2.2): ``L_pfe = L_orth + w_rec (rec1 + rec2 + rec3 + rec4)`` (2.4).
2. ``face`` (code name "exp"): two DistanceCrop views (3.2) -> trunk -> face head -> exp_fc ->
   InfoNCE with in-batch Beta-mixed negatives (2.5), times the DWA face weight (2.8).
3. ``pose``: P images x (2 positive views + K views of the flipped image as negatives) (3.3)
   -> trunk -> pose head -> pose_fc -> InfoNCE (2.6), times the DWA pose weight.

Gradient flow (2.7): trunk <- all three steps; face head <- pfe + face; pose head <- pfe + pose;
decoder <- pfe; exp_fc <- face; pose_fc <- pose.

Faithful / fixed switches (method doc 6, 7; the fixed behaviour is the default):

- ``pose_negatives``: ``fixed`` = each image's negatives are its own K flipped views (the paper's
  intent); ``faithful`` = the authors' collate-then-chunk indexing (2.6), see
  :func:`pose_negative_sets`.
- ``optimizer``: ``faithful`` = ``zero_grad(set_to_none=False)`` before each step, so after their
  first use every parameter gets an Adam update (zero gradient + coupled weight decay + momentum) in
  every step, also in steps that do not use it (2.7, bug 19); ``fixed`` = ``set_to_none=True``, so
  Adam skips the modules a step does not use.

Ablations (the paper's ablation table, method doc 5.1; ``pcl.ablation``, every flag true = full PCL;
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

from ..config import ConfigError, from_dict
from ..distributed import all_gather_with_grad, world_size
from ..losses import DifferenceLoss, DynamicWeightAverage, FaceContrastiveLoss, PoseContrastiveLoss
from ..losses import FLIP_SWAP_TERMS, flip_swap_reconstruction
from ..models import ModelConfig, build_decoder, build_encoder_from_config, build_projection
from ..models.heads import Decoder
from ..views import (ViewConfig, add_noise, apply_face_views, apply_pose_views, check_images, draw_face_views,
                     draw_pose_views, resize)
from . import METHODS
from .base import Method


@dataclass
class DWAConfig:
    """Dynamic Weight Averaging of the two contrastive losses (2.8)."""

    enabled: bool  # use_dwa [True]; False = both weights 1
    temperature: float  # dwa_T [2.0]
    start: int  # weights stay 1 for epochs <= start [2, i.e. warm_up -1]


@dataclass
class AblationConfig:
    """Section ``pcl.ablation``: which parts of PCL run (module docstring). All true = the paper's PCL."""

    pdd: bool  # the pfe step: reconstruction + L_orth (2.1-2.4)
    orth: bool  # L_orth inside L_pfe (2.3)
    flip_swap: bool  # the cross terms rec1, rec2 of the reconstruction (2.2)
    pose_step: bool  # the pose contrastive step (2.6)


# Footnote names of the switched-off parts, in the paper's order (method doc 5.1).
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
    """Section ``pcl``. Paper values (configs/remote_PCL_vox.yaml, 2.10) in brackets."""

    noise_std: float  # std of the Gaussian noise on the pfe inputs [0.4] (2.1)
    recon_weight: float  # w_rec of the four reconstruction terms [1.0, hard-coded] (2.4)
    temperature: float  # InfoNCE temperature of both contrastive losses [0.07]
    neg_alpha: float  # Beta(a, a) negative mixup [1.6]; <= 0 disables mixup
    pose_batch: int  # images per pose step [10, hard-coded] (2.6)
    n_negatives: int  # flipped views per pose image [100, hard-coded] (2.6)
    pose_negatives: Literal["fixed", "faithful"]  # own flips (fixed) or the authors' chunking
    optimizer: Literal["fixed", "faithful"]  # zero_grad(set_to_none=True) (fixed) or =False
    dwa: DWAConfig
    ablation: AblationConfig

    def __post_init__(self) -> None:
        for key in ("pose_batch", "n_negatives"):
            if getattr(self, key) < 1:
                raise ConfigError(f"pcl.{key}: must be >= 1, got {getattr(self, key)!r}")
        for key in ("noise_std", "recon_weight"):
            if getattr(self, key) < 0:
                raise ConfigError(f"pcl.{key}: must be >= 0, got {getattr(self, key)!r}")
        if not self.temperature > 0:
            raise ConfigError(f"pcl.temperature: must be > 0, got {self.temperature!r}")
        if not self.dwa.temperature > 0:
            raise ConfigError(f"pcl.dwa.temperature: must be > 0, got {self.dwa.temperature!r}")

    @classmethod
    def from_config(cls, section: Mapping[str, Any]) -> "PCLConfig":
        return from_dict(cls, section, "pcl")


def pose_negative_sets(neg: Tensor, mode: str) -> Tensor:
    """Each pose image's negative set, ``neg (P, K, ...) -> (P, K, ...)`` (method doc 2.6).

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
    """encoder (trunk + face head + pose head), exp_fc, pose_fc and the PDD decoder (method doc 1)."""

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
                              f"decoder's output size, method doc 1.5), got {img_size}")
        self.encoder = encoder
        self.exp_fc = exp_fc
        self.pose_fc = pose_fc
        self.decoder = decoder
        self.cfg = cfg
        self.views = views
        self.img_size = img_size
        self.diff_loss = DifferenceLoss()
        self.face_loss = FaceContrastiveLoss(cfg.temperature, cfg.neg_alpha)
        self.pose_loss = PoseContrastiveLoss(cfg.temperature, cfg.neg_alpha)
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
        """PDD step (2.1-2.4) on ``x (B, 3, S, S)`` in [0, 1]."""
        x = resize(x, self.img_size)  # (B, 3, 64, 64): clean target s
        x_flip = x.flip(-1)  # (B, 3, 64, 64): clean target s^
        # Independent noise on s and s^; the encoder has no normalisation layer, so one pass over
        # the 2B stacked images equals two passes.
        noisy = add_noise(torch.cat([x, x_flip], dim=0), self.cfg.noise_std, generator)  # (2B, 3, 64, 64)
        loss, logs = self._pfe_loss(noisy, x, x_flip)
        self._step(loss, optimizer, scaler)
        return self._keep(logs)

    def _pfe_loss(self, noisy: Tensor, x: Tensor, x_flip: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """L_pfe of the noisy pair ``noisy (2B, 3, 64, 64)`` = [s + n; s^ + n'] and the clean targets.

        Free of random draws (the noise is an input), so :meth:`compile_modules` can compile the
        whole forward and backward of the step into one graph."""
        b = x.shape[0]
        with self._autocast(x):
            _, face, pose = self.encoder.forward_maps(noisy)  # (2B, C, h, w) each
            face, pose = face.flatten(1), pose.flatten(1)  # (2B, D)
            e_n, e_f = face[:b], face[b:]
            p_n, p_f = pose[:b], pose[b:]
            # L_orth is batch-coupled (centred over the batch, X^T Y): under DDP over the GLOBAL batch,
            # as the authors' DataParallel computed it; identity with one process.
            g = all_gather_with_grad
            orth = self.diff_loss(g(e_n), g(p_n)) + self.diff_loss(g(e_f), g(p_f))
            # ablation "w/o flip-swap": each image from its own codes only (rec3, rec4)
            terms = tuple(FLIP_SWAP_TERMS) if self.cfg.ablation.flip_swap else ("rec3", "rec4")
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
        ce = self._face_loss(x, view_draws, draws)
        self._step(weight * ce, optimizer, scaler)
        return self._keep({"loss_face": ce.detach()})

    def _face_loss(self, x: Tensor, view_draws: Mapping[str, Any], draws: tuple[Tensor, Tensor] | None) -> Tensor:
        """Unweighted L_face of ``x (B, 3, H, W)``: its two views (3.2) -> trunk -> face head ->
        exp_fc -> InfoNCE. No random draws inside (they are arguments)."""
        v1, v2 = apply_face_views(x, view_draws, self.views, self.img_size)  # (B, 3, 64, 64) each
        b = v1.shape[0]
        with self._autocast(v1):
            trunk = self.encoder.forward_trunk(torch.cat([v1, v2], dim=0))  # (2B, C, h, w)
            z = self.exp_fc(self.encoder.forward_face(trunk).flatten(1))  # (2B, out_dim), one BN batch
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
        ce = self._pose_loss(x, view_draws, draws)
        self._step(weight * ce, optimizer, scaler)
        return self._keep({"loss_pose": ce.detach()})

    def _keep(self, logs: dict[str, Tensor]) -> dict[str, Tensor]:
        # Outputs of a CUDA-graph replay (compile mode reduce-overhead) are overwritten by the next
        # replay; the trainer keeps the logged values longer, so they are copied (scalars: free).
        return {k: v.clone() for k, v in logs.items()} if self._compiled else logs

    def _pose_loss(self, x: Tensor, view_draws: Mapping[str, Tensor], draws: tuple[Tensor, Tensor] | None) -> Tensor:
        """Unweighted L_pose of ``x (P, 3, H, W)``: P x (2 positives + K flipped negatives) views (3.3)
        -> trunk -> pose head -> pose_fc -> InfoNCE. No random draws inside."""
        k = self.cfg.n_negatives
        pos, neg = apply_pose_views(x, k, view_draws, self.views, self.img_size)  # (P, 2, 3, S, S), (P, K, ...)
        p = pos.shape[0]
        imgs = torch.cat([pos.flatten(0, 1), neg.flatten(0, 1)], dim=0)  # (P (2 + K), 3, S, S)
        with self._autocast(imgs):
            trunk = self.encoder.forward_trunk(imgs)
            z = self.pose_fc(self.encoder.forward_pose(trunk).flatten(1))  # (P (2 + K), out_dim)
            z_pos = z[: 2 * p].reshape(p, 2, -1)  # (P, 2, out_dim)
            z_neg = pose_negative_sets(z[2 * p:].reshape(p, k, -1), self.cfg.pose_negatives)  # (P, K, out_dim)
            return self.pose_loss(z_pos, z_neg, draws=draws)

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
        """Flip-swap reconstructions of ``x (R, 3, H, W)`` in [0, 1] for a figure (method doc 2.2).

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
