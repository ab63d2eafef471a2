"""InfoNCE with Beta-mixup of negatives: PCL's face-aware (2.5) and pose-related (2.6) contrastive losses,
and NT-Xent (:func:`nt_xent`), the face-aware loss without mixup, which SimCLR uses as its loss.

Mixup (docs/method.md §2.5): for anchor i and negative slot j, ``lambda_ij ~ Beta(a, a)`` and ONE
permutation ``pi`` of the K slots shared by all anchors give
``n'_ij = lambda_ij * n_ij + (1 - lambda_ij) * n_i,pi(j)``, so every mixed negative is a convex mix
of two of the anchor's own negatives (the positive is never mixed in), taken BEFORE L2-normalisation.
Gradients flow through the negatives. Logits ``[cos(q, k), cos(q, n'_1..K)] / T``, cross-entropy
with target 0, mean over anchors.

Randomness: every draw takes an explicit ``torch.Generator`` on the tensors' device (``None`` uses
the global generator of that device). Beta variates are sampled on the device from two Gamma
variates (Marsaglia-Tsang, vectorised with a fixed number of proposal rounds) because
``torch.distributions.Beta`` cannot take a generator; no host-device sync happens.

Losses are computed in float32 even under autocast: they are cheap and cosines / exp(1/T) are
precision-sensitive. Float64 inputs stay float64 (:func:`loss_float`), so a float64 model can be
compared with a float64 reference to float64 rounding (tests/test_pcl_reference.py).
"""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

_MT_ROUNDS = 16  # Marsaglia-Tsang proposals per variate; acceptance >= 0.95 each, P(all rejected) < 1e-20


def no_autocast(device: torch.device):
    """Context that keeps a loss in float32 when the caller runs under ``torch.autocast``."""
    return torch.autocast(device_type=torch.device(device).type, enabled=False)


def loss_float(x: Tensor) -> Tensor:
    """``x`` in the precision a loss is computed in: float16 / bfloat16 (autocast outputs) are raised
    to float32, float32 and float64 are kept."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _check_generator(generator: torch.Generator | None, device: torch.device) -> None:
    if generator is not None and torch.device(generator.device).type != torch.device(device).type:
        raise ValueError(f"generator is on {generator.device} but the tensors are on {device}; "
                         "create the torch.Generator on the tensors' device")


def sample_gamma(concentration: float, shape: tuple[int, ...], generator: torch.Generator | None,
                 device: torch.device | str) -> Tensor:
    """Gamma(concentration, 1) variates (float32) on ``device`` (Marsaglia & Tsang 2000).

    For a < 1, Gamma(a) = Gamma(a + 1) * U^(1/a). Each variate gets ``_MT_ROUNDS`` proposals at once
    and keeps the first accepted one, so the result is exact except with probability < 1e-20.
    ``concentration`` > 0: the callers draw only when :func:`mixup_enabled` (the config's ``neg_alpha``).
    """
    _check_generator(generator, torch.device(device))
    a = float(concentration)
    boost = a < 1.0
    d = (a + 1.0 if boost else a) - 1.0 / 3.0
    c = 1.0 / math.sqrt(9.0 * d)
    z = torch.randn((_MT_ROUNDS, *shape), generator=generator, device=device)
    u = torch.rand((_MT_ROUNDS, *shape), generator=generator, device=device)
    v = (1.0 + c * z) ** 3
    ok = v > 0
    v_safe = torch.where(ok, v, torch.ones_like(v))
    accept = ok & (torch.log(u) < 0.5 * z * z + d - d * v_safe + d * torch.log(v_safe))
    first = torch.argmax(accept.to(torch.uint8), dim=0, keepdim=True)  # first accepted round (0 if none)
    g = d * torch.gather(v_safe, 0, first).squeeze(0)
    if boost:
        u2 = torch.rand(shape, generator=generator, device=device)
        g = g * u2.pow(1.0 / a)
    return g


def sample_beta(alpha: float, shape: tuple[int, ...], generator: torch.Generator | None,
                device: torch.device | str) -> Tensor:
    """Symmetric Beta(alpha, alpha) variates ``X / (X + Y)`` with X, Y ~ Gamma(alpha)."""
    x = sample_gamma(alpha, shape, generator, device)
    y = sample_gamma(alpha, shape, generator, device)
    return x / (x + y).clamp_min(torch.finfo(torch.float32).tiny)


def mixup_enabled(alpha: float | None) -> bool:
    return alpha is not None and alpha > 0


def draw_mixup(n_anchors: int, n_neg: int, alpha: float, generator: torch.Generator | None,
               device: torch.device | str) -> tuple[Tensor, Tensor]:
    """The random draws of one mixup, in a fixed order: ``lam (A, K)`` then ``perm (K,)``.

    Exposed so that tests (and anyone auditing a run) can reproduce a loss's mixup from the same seed.
    """
    lam = sample_beta(alpha, (n_anchors, n_neg), generator, device)  # (A, K)
    perm = torch.randperm(n_neg, generator=generator, device=device)  # (K,) shared by all anchors
    return lam, perm


def _check_draws(draws: tuple[Tensor, Tensor], n_anchors: int, n_neg: int, who: str) -> tuple[Tensor, Tensor]:
    lam, perm = draws
    if tuple(lam.shape) != (n_anchors, n_neg) or tuple(perm.shape) != (n_neg,):
        raise ValueError(f"{who}: draws must be lam ({n_anchors}, {n_neg}) and perm ({n_neg},), got "
                         f"{tuple(lam.shape)} and {tuple(perm.shape)}")
    return lam, perm


def mix_negatives(neg: Tensor, alpha: float | None, generator: torch.Generator | None,
                  draws: tuple[Tensor, Tensor] | None = None) -> Tensor:
    """Beta-mixup of each anchor's negatives, ``neg (A, K, D) -> (A, K, D)`` (docs/method.md §2.5).

    ``alpha`` None or <= 0 disables mixing (returns ``neg``). ``draws``: the ``(lam, perm)`` of
    :func:`draw_mixup` drawn beforehand (then ``generator`` is not used), so the computation itself
    is free of random draws and can be compiled into one graph.
    """
    if neg.dim() != 3:
        raise ValueError(f"mix_negatives: neg must be (A, K, D), got {tuple(neg.shape)}")
    if not mixup_enabled(alpha):
        return neg
    a, k, _ = neg.shape
    lam, perm = (_check_draws(draws, a, k, "mix_negatives") if draws is not None
                 else draw_mixup(a, k, alpha, generator, neg.device))
    lam = lam.to(neg.dtype)[:, :, None]  # (A, K, 1)
    return lam * neg + (1.0 - lam) * neg[:, perm]


def info_nce_with_negatives(q: Tensor, k: Tensor, neg: Tensor, temperature: float) -> Tensor:
    """Mean InfoNCE over anchors: ``q, k (A, D)``, ``neg (A, K, D)``; everything L2-normalised inside."""
    if q.dim() != 2 or k.shape != q.shape or neg.dim() != 3 or neg.shape[0] != q.shape[0] \
            or neg.shape[2] != q.shape[1]:
        raise ValueError(f"info_nce_with_negatives: expected q, k (A, D) and neg (A, K, D); got "
                         f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(neg.shape)}")
    with no_autocast(q.device):
        q = F.normalize(loss_float(q), dim=-1)
        k = F.normalize(loss_float(k), dim=-1)
        neg = F.normalize(loss_float(neg), dim=-1)
        pos = (q * k).sum(-1, keepdim=True)  # (A, 1)
        negs = torch.einsum("ad,akd->ak", q, neg)  # (A, K)
        logits = torch.cat([pos, negs], dim=1) / temperature  # (A, 1 + K)
        target = torch.zeros(q.shape[0], dtype=torch.long, device=q.device)
        return F.cross_entropy(logits, target)


def _other_rows(n: int, device: torch.device) -> Tensor:
    """``(n, n - 2)`` indices: for row i of ``[v1; v2]`` every row except i and its other view, ascending."""
    half = n // 2
    i = torch.arange(n, device=device)[:, None]  # (n, 1)
    lo = torch.remainder(i, half)  # the row's view-1 index
    hi = lo + half  # and view-2 index; lo < hi
    j = torch.arange(n - 2, device=device)[None, :]  # (1, n - 2)
    r = j + (j >= lo).long()
    return r + (r >= hi).long()  # (n, n - 2)


def nt_xent(z1: Tensor, z2: Tensor, temperature: float, *, gather: Callable[[Tensor], Tensor] | None = None,
            rank: int = 0) -> Tensor:
    """NT-Xent: InfoNCE over in-batch views without mixup, mean over the 2B local anchors.

    SimCLR's loss (Chen et al., ICML 2020, eq. 1) and :func:`face_contrastive_loss` with mixup off.
    ``z1, z2 (B, D)``: row i of each = the two views of image i (un-normalised). Anchor i of
    ``[z1; z2]`` is compared with every key but itself; the target is its other view, so its
    negatives are the other 2B - 2 views. Distributed (SimCLR): ``gather`` maps this rank's normalised
    ``(B, D)`` rows to every rank's ``(W B, D)`` (gradients flow back to each row's rank) and
    ``rank`` is this rank's block in them: the anchors stay local, the keys are global. ``None``:
    the local batch is the whole batch. Float32 under autocast; float64 stays float64 (:func:`loss_float`).
    """
    if z1.shape != z2.shape or z1.dim() != 2:
        raise ValueError(f"nt_xent: z1 and z2 must be (B, D) of one shape, got {tuple(z1.shape)}, {tuple(z2.shape)}")
    with no_autocast(z1.device):
        z1, z2 = F.normalize(loss_float(z1), dim=1), F.normalize(loss_float(z2), dim=1)
        b = z1.shape[0]
        k1, k2 = (gather(z1), gather(z2)) if gather is not None else (z1, z2)  # (W B, D): every rank's views
        n_all = k1.shape[0]
        keys = torch.cat([k1, k2], dim=0)  # (2 W B, D)
        q = torch.cat([z1, z2], dim=0)  # (2B, D): local anchors
        logits = q @ keys.T / temperature  # (2B, 2 W B)
        local = rank * b + torch.arange(b, device=q.device)  # rows of this rank's images in k1 / k2
        self_idx = torch.cat([local, n_all + local])  # (2B,)
        pos_idx = torch.cat([n_all + local, local])
        logits = logits.masked_fill(F.one_hot(self_idx, keys.shape[0]).bool(), float("-inf"))
        return F.cross_entropy(logits, pos_idx)


def face_contrastive_loss(z1: Tensor, z2: Tensor, temperature: float, neg_alpha: float | None,
                          generator: torch.Generator | None = None,
                          draws: tuple[Tensor, Tensor] | None = None) -> Tensor:
    """Face-aware InfoNCE with in-batch, Beta-mixed negatives (docs/method.md §2.5).

    ``z1, z2 (B, D)``: projected features of the two views of each image. Anchors are the 2B rows of
    ``[z1; z2]``; row i's positive is its other view and its negatives are the other 2B - 2 rows (in
    ascending row order), mixed with :func:`draw_mixup` ``(2B, 2B - 2)`` draws before normalisation.

    Exact but without materialising the ``(2B, 2B - 2, D)`` negatives: with ``a = z_idx[i, j]``,
    ``b = z_idx[i, pi(j)]`` and ``q`` the normalised anchor,
    ``cos(q, lam a + (1 - lam) b) = (lam q.a + (1 - lam) q.b) / ||lam a + (1 - lam) b||`` and
    ``||.||^2 = lam^2 a.a + (1 - lam)^2 b.b + 2 lam (1 - lam) a.b``; all dot products come from two
    ``(2B, 2B)`` Gram matrices. ``draws``: :func:`draw_mixup` ``(2B, 2B - 2)`` made beforehand
    (see :func:`mix_negatives`). ``neg_alpha`` None or <= 0 (no mixup): :func:`nt_xent` (SimCLR's loss).
    """
    if z1.dim() != 2 or z1.shape != z2.shape:
        raise ValueError(f"face_contrastive_loss: z1 and z2 must both be (B, D), got {tuple(z1.shape)} "
                         f"and {tuple(z2.shape)}")
    if z1.shape[0] < 2:
        raise ValueError(f"face_contrastive_loss: needs a batch of at least 2 images, got {z1.shape[0]}")
    _check_generator(generator, z1.device)
    if not mixup_enabled(neg_alpha):
        return nt_xent(z1, z2, temperature)
    with no_autocast(z1.device):
        z = loss_float(torch.cat([z1, z2], dim=0))  # (2B, D), un-normalised
        n, b = z.shape[0], z1.shape[0]
        qn = F.normalize(z, dim=1)  # (2B, D)
        rows = torch.arange(n, device=z.device)
        pos = (qn * qn[torch.remainder(rows + b, n)]).sum(1, keepdim=True)  # (2B, 1)
        idx = _other_rows(n, z.device)  # (2B, 2B - 2)
        qz = qn @ z.T  # (2B, 2B): q_i . z_j
        lam, perm = (_check_draws(draws, n, n - 2, "face_contrastive_loss") if draws is not None
                     else draw_mixup(n, n - 2, neg_alpha, generator, z.device))  # (2B, 2B-2), (2B-2,)
        # The draws are float32 (sample_beta); lam^2 and lam (1 - lam) below must be formed in the
        # features' precision, as mix_negatives does, or a float64 run is only float32-accurate.
        # (Side-by-side run against DreamMr/PCL Models/exppose.py neg_inter_info_nce_loss, which
        # mixes the float64 features themselves: loss relative error 1e-9 before this cast, 2e-15 after.)
        lam = lam.to(z.dtype)
        idx_b = idx[:, perm]  # (2B, 2B - 2): the partner negative of each slot
        zz = z @ z.T  # (2B, 2B)
        sq = zz.diagonal()  # (2B,)
        num = lam * qz.gather(1, idx) + (1 - lam) * qz.gather(1, idx_b)
        norm2 = lam.square() * sq[idx] + (1 - lam).square() * sq[idx_b] \
            + 2 * lam * (1 - lam) * zz[idx, idx_b]
        # F.normalize's eps=1e-12 on the norm, so the two implementations agree on degenerate inputs.
        negs = num / norm2.clamp_min(1e-24).sqrt()  # (2B, 2B - 2)
        logits = torch.cat([pos, negs], dim=1) / temperature
        target = torch.zeros(n, dtype=torch.long, device=z.device)
        return F.cross_entropy(logits, target)


def pose_contrastive_loss(z_pos: Tensor, z_neg: Tensor, temperature: float, neg_alpha: float | None,
                          generator: torch.Generator | None = None,
                          draws: tuple[Tensor, Tensor] | None = None, share_views: bool = False) -> Tensor:
    """Pose-related InfoNCE (docs/method.md §2.6).

    ``z_pos (B, 2, D)``: the two un-flipped views of each image; ``z_neg (B, K, D)``: that image's K
    negatives (which images they come from is the caller's choice: the authors' chunking quirk of
    2.6 is a re-indexing of ``z_neg`` before this call). Anchors are both views (2B, ordered view 1
    of every image, then view 2); the K negatives of an image serve both of its views, mixed with
    ONE permutation shared by all anchors and Beta lambdas drawn

    - ``share_views=False``: per anchor and slot, ``lam (2B, K)``: each view of an image gets its own
      mixes, as every anchor of the face loss does (2.5);
    - ``share_views=True``: per image and slot, ``lam (B, K)``, shared by the image's two views: the
      authors mix each image's negative set once and then repeat it for both views (DreamMr/PCL
      Models/exppose.py ``neg_inter_info_nce_loss_pose``: Beta draws of shape (b/2, 100), mixing,
      then ``repeat(2, 1, 1)``; docs/method.md §2.6 "the negative set is shared by the two views").

    ``draws``: :func:`draw_mixup` of that shape made beforehand (``PoseContrastiveLoss.draw``).
    """
    if z_pos.dim() != 3 or z_pos.shape[1] != 2 or z_neg.dim() != 3 or z_neg.shape[0] != z_pos.shape[0] \
            or z_neg.shape[2] != z_pos.shape[2]:
        raise ValueError(f"pose_contrastive_loss: expected z_pos (B, 2, D) and z_neg (B, K, D), got "
                         f"{tuple(z_pos.shape)} and {tuple(z_neg.shape)}")
    _check_generator(generator, z_pos.device)
    q = torch.cat([z_pos[:, 0], z_pos[:, 1]], dim=0)  # (2B, D)
    k = torch.cat([z_pos[:, 1], z_pos[:, 0]], dim=0)  # (2B, D)
    with no_autocast(z_neg.device):
        neg = loss_float(z_neg)  # (B, K, D)
        if share_views:
            # one mix per image, then the same mixed set for both views (the authors' order)
            neg = mix_negatives(neg, neg_alpha, generator, draws)  # (B, K, D)
            neg = torch.cat([neg, neg], dim=0)  # (2B, K, D)
        else:
            neg = torch.cat([neg, neg], dim=0)  # (2B, K, D): shared by the two views of an image
            neg = mix_negatives(neg, neg_alpha, generator, draws)  # each anchor mixed with its own lambdas
    return info_nce_with_negatives(q, k, neg, temperature)


class FaceContrastiveLoss(nn.Module):
    """Face-aware contrastive loss L_face (docs/method.md §2.5); see :func:`face_contrastive_loss`.

    Paper: temperature 0.07, neg_alpha 1.6. ``neg_alpha`` None or <= 0 disables the mixup.
    """

    def __init__(self, temperature: float, neg_alpha: float | None):
        super().__init__()
        self.temperature = float(temperature)
        self.neg_alpha = None if neg_alpha is None else float(neg_alpha)

    def draw(self, batch: int, generator: torch.Generator | None, device: torch.device | str):
        """The mixup draws for ``batch`` images (2 x batch anchors), or None without mixup."""
        n = 2 * batch
        return draw_mixup(n, n - 2, self.neg_alpha, generator, device) if mixup_enabled(self.neg_alpha) else None

    def forward(self, z1: Tensor, z2: Tensor, generator: torch.Generator | None = None,
                draws: tuple[Tensor, Tensor] | None = None) -> Tensor:
        return face_contrastive_loss(z1, z2, self.temperature, self.neg_alpha, generator, draws)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, neg_alpha={self.neg_alpha}"


class PoseContrastiveLoss(nn.Module):
    """Pose-related contrastive loss L_pose (docs/method.md §2.6); see :func:`pose_contrastive_loss`.

    ``share_views``: one Beta lambda per image and negative slot, shared by the image's two views
    (the authors' code; ``pcl.pose_mixup_lambdas: faithful``), instead of one per anchor.
    """

    def __init__(self, temperature: float, neg_alpha: float | None, share_views: bool = False):
        super().__init__()
        self.temperature = float(temperature)
        self.neg_alpha = None if neg_alpha is None else float(neg_alpha)
        self.share_views = bool(share_views)

    def draw(self, batch: int, n_neg: int, generator: torch.Generator | None, device: torch.device | str):
        """The mixup draws for ``batch`` images of ``n_neg`` negatives, or None without mixup:
        ``lam (2 batch, n_neg)`` (one per anchor) or ``(batch, n_neg)`` (``share_views``), ``perm (n_neg,)``."""
        if not mixup_enabled(self.neg_alpha):
            return None
        return draw_mixup(batch if self.share_views else 2 * batch, n_neg, self.neg_alpha, generator, device)

    def forward(self, z_pos: Tensor, z_neg: Tensor, generator: torch.Generator | None = None,
                draws: tuple[Tensor, Tensor] | None = None) -> Tensor:
        return pose_contrastive_loss(z_pos, z_neg, self.temperature, self.neg_alpha, generator, draws,
                                     share_views=self.share_views)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, neg_alpha={self.neg_alpha}, share_views={self.share_views}"
