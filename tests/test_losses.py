"""Contrastive, difference and reconstruction losses against hand-written references (docs/method.md §2.2-2.6)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats
import torch.nn.functional as F
from torch import nn

from pclbench.pretrain.losses import (DifferenceLoss, FaceContrastiveLoss, PoseContrastiveLoss, draw_mixup,
                                      face_contrastive_loss, flip_swap_reconstruction, info_nce_with_negatives,
                                      mix_negatives, nt_xent, sample_beta)
from pclbench.models import Decoder

torch.set_num_threads(2)
T = 0.07


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def np_ce_target0(logits: np.ndarray) -> float:
    m = logits.max()
    return float(-(logits[0] - m - math.log(np.exp(logits - m).sum())))


def unit(v: np.ndarray) -> np.ndarray:
    return v / max(np.linalg.norm(v), 1e-12)


# --------------------------------------------------------------------------------------------- Beta


@pytest.mark.parametrize("alpha", [1.6, 0.5])
def test_beta_sampler_matches_distribution(alpha):
    x = sample_beta(alpha, (20000,), gen(0), "cpu").double().numpy()
    assert x.min() >= 0 and x.max() <= 1
    assert stats.kstest(x, stats.beta(alpha, alpha).cdf).pvalue > 1e-3


def test_beta_sampler_is_deterministic_per_generator():
    a = sample_beta(1.6, (50,), gen(5), "cpu")
    b = sample_beta(1.6, (50,), gen(5), "cpu")
    c = sample_beta(1.6, (50,), gen(6), "cpu")
    assert torch.equal(a, b) and not torch.equal(a, c)


# --------------------------------------------------------------------------------------------- mixup


def test_mix_negatives_is_convex_within_each_anchor():
    neg = torch.randn(4, 6, 3)
    mixed = mix_negatives(neg, 1.6, gen(1))
    lam, perm = draw_mixup(4, 6, 1.6, gen(1), "cpu")
    assert sorted(perm.tolist()) == list(range(6))
    assert ((lam >= 0) & (lam <= 1)).all()
    n = neg.numpy().astype(np.float64)
    for a in range(4):
        for j in range(6):
            partner = n[a, perm[j]]
            # on the segment between the slot's negative and its partner, both of this anchor
            lj = lam[a, j].item()
            np.testing.assert_allclose(mixed[a, j].numpy(), lj * n[a, j] + (1 - lj) * partner, rtol=1e-5, atol=1e-6)
    # one permutation shared by all anchors: mixed - partner is parallel to (n - partner) for every anchor
    assert not torch.allclose(mixed, neg)


@pytest.mark.parametrize("alpha", [None, 0.0, -1.0])
def test_mix_negatives_disabled(alpha):
    neg = torch.randn(2, 3, 4)
    assert torch.equal(mix_negatives(neg, alpha, gen(0)), neg)


def test_info_nce_with_negatives_against_loop():
    torch.manual_seed(0)
    q, k, neg = torch.randn(5, 4), torch.randn(5, 4), torch.randn(5, 7, 4)
    got = info_nce_with_negatives(q, k, neg, T).item()
    ref = []
    for a in range(5):
        qa = unit(q[a].double().numpy())
        logits = [qa @ unit(k[a].double().numpy())] + [qa @ unit(neg[a, j].double().numpy()) for j in range(7)]
        ref.append(np_ce_target0(np.array(logits) / T))
    assert got == pytest.approx(np.mean(ref), rel=1e-5)


# --------------------------------------------------------------------------------------------- face loss


def face_loss_reference(z1: torch.Tensor, z2: torch.Tensor, alpha, seed) -> float:
    """Explicit loop over the 2B anchors and their 2B-2 negatives (docs/method.md §2.5)."""
    z = torch.cat([z1, z2]).double().numpy()
    n, b = z.shape[0], z1.shape[0]
    if alpha:
        lam, perm = draw_mixup(n, n - 2, alpha, gen(seed), "cpu")
        lam, perm = lam.double().numpy(), perm.numpy()
    losses = []
    for i in range(n):
        pos = (i + b) % n
        negs = [z[j] for j in range(n) if j not in (i, pos)]
        if alpha:
            negs = [lam[i, j] * negs[j] + (1 - lam[i, j]) * negs[perm[j]] for j in range(n - 2)]
        q = unit(z[i])
        logits = [q @ unit(z[pos])] + [q @ unit(v) for v in negs]
        losses.append(np_ce_target0(np.array(logits) / T))
    return float(np.mean(losses))


@pytest.mark.parametrize("alpha", [None, 1.6])
def test_face_loss_against_loop_reference(alpha):
    torch.manual_seed(1)
    z1, z2 = torch.randn(5, 8), torch.randn(5, 8)
    got = FaceContrastiveLoss(T, alpha)(z1, z2, generator=gen(7)).item()
    assert got == pytest.approx(face_loss_reference(z1, z2, alpha, 7), rel=1e-5)


def test_face_loss_gradient_matches_materialised_negatives():
    # The Gram-matrix implementation must give the same gradient as mixing the (2B, 2B-2, D) tensor.
    torch.manual_seed(2)
    z1 = torch.randn(4, 6, requires_grad=True)
    z2 = torch.randn(4, 6, requires_grad=True)
    FaceContrastiveLoss(T, 1.6)(z1, z2, generator=gen(3)).backward()
    g_fast = (z1.grad.clone(), z2.grad.clone())
    z1.grad = z2.grad = None
    z = torch.cat([z1, z2])
    n = z.shape[0]
    idx = torch.tensor([[j for j in range(n) if j not in (i, (i + 4) % n)] for i in range(n)])
    neg = mix_negatives(z[idx], 1.6, gen(3))
    info_nce_with_negatives(z, z[(torch.arange(n) + 4) % n], neg, T).backward()
    torch.testing.assert_close(z1.grad, g_fast[0], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(z2.grad, g_fast[1], rtol=1e-4, atol=1e-6)


def test_face_loss_never_mixes_in_the_positive_or_anchor():
    # Each image has one direction e_i (both views identical). If only other images' rows are mixed,
    # every negative is orthogonal to the anchor: loss = -log(e^(1/T) / (e^(1/T) + 2B - 2)), whatever lambda.
    # Mixing in the anchor's own direction (the positive) would raise some negative's cosine above 0.
    b = 6
    z = torch.eye(2 * b)[:b] * torch.arange(1, b + 1, dtype=torch.float32)[:, None]  # (B, 2B), distinct norms
    t = 0.5  # with T = 0.07 the loss is ~1e-6, below float32 resolution of the log-softmax
    expected = -math.log(math.exp(1 / t) / (math.exp(1 / t) + 2 * b - 2))
    for seed in range(3):
        got = FaceContrastiveLoss(t, 1.6)(z, z.clone(), generator=gen(seed)).item()
        assert got == pytest.approx(expected, rel=1e-5)


def test_face_loss_deterministic_and_validated():
    z1, z2 = torch.randn(4, 5), torch.randn(4, 5)
    loss = FaceContrastiveLoss(T, 1.6)
    assert loss(z1, z2, generator=gen(0)) == loss(z1, z2, generator=gen(0))
    assert loss(z1, z2, generator=gen(0)) != loss(z1, z2, generator=gen(1))
    with pytest.raises(ValueError, match="z1 and z2"):
        loss(z1, torch.randn(3, 5))


# --------------------------------------------------------------------------------------------- NT-Xent


def nt_xent_reference(z1: torch.Tensor, z2: torch.Tensor, t: float, keys=None, first: int = 0) -> float:
    """NT-Xent by hand (SimCLR eq. 1): anchors = the local rows of [z1; z2]; keys = every rank's rows
    ``keys = (k1, k2)`` (default the local ones), the local images at rows ``first ..`` of k1 / k2."""
    z1, z2 = z1.double().numpy(), z2.double().numpy()
    k1, k2 = (z1, z2) if keys is None else (keys[0].double().numpy(), keys[1].double().numpy())
    b, m = z1.shape[0], k1.shape[0]
    all_keys = [unit(v) for v in np.concatenate([k1, k2])]  # (2M, D)
    losses = []
    for i, q in enumerate(unit(v) for v in np.concatenate([z1, z2])):
        img, view = i % b, i // b
        self_row = view * m + first + img
        pos_row = (1 - view) * m + first + img
        logits = [q @ all_keys[pos_row]] + [q @ all_keys[r] for r in range(2 * m) if r not in (self_row, pos_row)]
        losses.append(np_ce_target0(np.array(logits) / t))
    return float(np.mean(losses))


@pytest.mark.parametrize("b, t", [(2, 0.07), (5, 0.1), (8, 0.5)])
def test_nt_xent_against_hand_written_reference(b, t):
    z1, z2 = torch.randn(b, 6, generator=gen(b)), torch.randn(b, 6, generator=gen(b + 100))
    assert nt_xent(z1, z2, t).item() == pytest.approx(nt_xent_reference(z1, z2, t), rel=1e-5)
    z1, z2 = z1.double(), z2.double()  # float64 stays float64, to float64 rounding
    got = nt_xent(z1, z2, t)
    assert got.dtype == torch.float64 and got.item() == pytest.approx(nt_xent_reference(z1, z2, t), rel=1e-12)


def test_nt_xent_two_rank_keys_with_local_anchors():
    # Rank 1 of 2: its 3 images are rows 3..5 of the gathered keys; the anchors are its own 6 views only.
    other1, other2 = torch.randn(3, 4, generator=gen(1)), torch.randn(3, 4, generator=gen(2))
    z1, z2 = torch.randn(3, 4, generator=gen(3)), torch.randn(3, 4, generator=gen(4))
    rank0_rows = [F.normalize(other1, dim=1), F.normalize(other2, dim=1)]  # what rank 0 contributes, per view

    def gather(x):  # all_gather_with_grad on rank 1: rank 0's rows, then ours (called for view 1, then view 2)
        return torch.cat([rank0_rows.pop(0), x])

    got = nt_xent(z1, z2, 0.2, gather=gather, rank=1).item()
    ref = nt_xent_reference(z1, z2, 0.2, keys=(torch.cat([other1, z1]), torch.cat([other2, z2])), first=3)
    assert got == pytest.approx(ref, rel=1e-5)


@pytest.mark.parametrize("alpha", [None, 0.0, -1.0])
def test_face_loss_without_mixup_is_nt_xent(alpha):
    z1, z2 = torch.randn(6, 5, generator=gen(8)), torch.randn(6, 5, generator=gen(9))
    assert torch.equal(face_contrastive_loss(z1, z2, T, alpha), nt_xent(z1, z2, T))
    assert torch.equal(FaceContrastiveLoss(T, alpha)(z1, z2), nt_xent(z1, z2, T))


def test_nt_xent_shape_error_and_autocast_precision():
    z1, z2 = torch.randn(4, 5), torch.randn(4, 5)
    with pytest.raises(ValueError, match="nt_xent"):
        nt_xent(z1, z2[:3], T)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = nt_xent(z1.bfloat16(), z2.bfloat16(), T)
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(nt_xent_reference(z1.bfloat16().float(), z2.bfloat16().float(), T), rel=1e-5)


# --------------------------------------------------------------------------------------------- pose loss


def pose_loss_reference(z_pos, z_neg, alpha, seed) -> float:
    b, k = z_neg.shape[:2]
    zp, zn = z_pos.double().numpy(), z_neg.double().numpy()
    if alpha:
        lam, perm = draw_mixup(2 * b, k, alpha, gen(seed), "cpu")
        lam, perm = lam.double().numpy(), perm.numpy()
    losses = []
    anchors = [(s, 0) for s in range(b)] + [(s, 1) for s in range(b)]  # view 1 of all, then view 2
    for a, (s, v) in enumerate(anchors):
        negs = [zn[s, j] for j in range(k)]  # this image's own negatives only
        if alpha:
            negs = [lam[a, j] * negs[j] + (1 - lam[a, j]) * negs[perm[j]] for j in range(k)]
        q = unit(zp[s, v])
        logits = [q @ unit(zp[s, 1 - v])] + [q @ unit(x) for x in negs]
        losses.append(np_ce_target0(np.array(logits) / T))
    return float(np.mean(losses))


@pytest.mark.parametrize("alpha", [None, 1.6])
def test_pose_loss_against_loop_reference(alpha):
    torch.manual_seed(3)
    z_pos, z_neg = torch.randn(3, 2, 6), torch.randn(3, 5, 6)
    got = PoseContrastiveLoss(T, alpha)(z_pos, z_neg, generator=gen(11)).item()
    assert got == pytest.approx(pose_loss_reference(z_pos, z_neg, alpha, 11), rel=1e-5)


def test_pose_loss_shape_errors():
    with pytest.raises(ValueError, match="z_pos"):
        PoseContrastiveLoss(T, 1.6)(torch.randn(3, 3, 6), torch.randn(3, 5, 6))


# --------------------------------------------------------------------------------------------- difference loss


def test_difference_loss_against_numpy_formula():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(7, 5)), rng.normal(size=(7, 4)) + 3.0

    def prep(a):
        a = a - a.mean(0)
        return a / (np.linalg.norm(a, axis=1, keepdims=True) + 1e-6)

    ref = np.mean((prep(x).T @ prep(y)) ** 2)  # mean over the 5 x 4 entries of X^T Y
    got = DifferenceLoss()(torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.float32)).item()
    assert got == pytest.approx(ref, rel=1e-5)


def test_difference_loss_zero_for_orthogonal_centred_features():
    a = torch.tensor([1.0, 1.0, -1.0, -1.0])  # zero mean
    c = torch.tensor([2.0, -2.0, 2.0, -2.0])  # zero mean, sum(sign(a) sign(c)) = 0
    x = a[:, None] * torch.tensor([1.0, -2.0, 0.5])[None]  # (4, 3) rank one
    y = c[:, None] * torch.tensor([0.3, 1.0])[None]  # (4, 2)
    assert DifferenceLoss()(x, y).item() == pytest.approx(0.0, abs=1e-12)
    assert DifferenceLoss()(x, x).item() > 0.1


def test_difference_loss_scale_invariant():
    torch.manual_seed(4)
    x, y = torch.randn(6, 9), torch.randn(6, 9)
    base = DifferenceLoss()(x, y).item()
    assert DifferenceLoss()(50.0 * x, 0.02 * y).item() == pytest.approx(base, rel=1e-4)
    assert DifferenceLoss()(x + 10.0, y - 3.0).item() == pytest.approx(base, rel=1e-4)  # centring


def test_difference_loss_gradient_only_through_numerator():
    torch.manual_seed(5)
    x = torch.randn(6, 4, requires_grad=True)
    y = torch.randn(6, 3, requires_grad=True)
    DifferenceLoss()(x, y).backward()
    # reference: the same formula with the row norms as constants computed outside the graph
    xc0, yc0 = x.detach() - x.detach().mean(0), y.detach() - y.detach().mean(0)
    nx, ny = xc0.norm(dim=1, keepdim=True) + 1e-6, yc0.norm(dim=1, keepdim=True) + 1e-6
    x2, y2 = x.detach().clone().requires_grad_(), y.detach().clone().requires_grad_()
    ref = (((x2 - x2.mean(0)) / nx).T @ ((y2 - y2.mean(0)) / ny)).square().mean()
    ref.backward()
    torch.testing.assert_close(x.grad, x2.grad)
    torch.testing.assert_close(y.grad, y2.grad)
    # and that differs from the gradient with the norm inside the graph
    x3 = x.detach().clone().requires_grad_()
    xc = x3 - x3.mean(0)
    yn = (y.detach() - y.detach().mean(0)) / ny
    ((xc / (xc.norm(dim=1, keepdim=True) + 1e-6)).T @ yn).square().mean().backward()
    assert not torch.allclose(x3.grad, x.grad, atol=1e-4)


# --------------------------------------------------------------------------------------------- reconstruction


class CountingDecoder(nn.Module):
    def __init__(self, dec: nn.Module):
        super().__init__()
        self.dec, self.batches = dec, []

    def forward(self, code):
        self.batches.append(code.shape[0])
        return self.dec(code)


def test_flip_swap_reconstruction_terms():
    torch.manual_seed(6)
    dec = CountingDecoder(Decoder(10, 8, [4, 4, 4, 4, 4]).eval())
    e_n, p_n, e_f, p_f = (torch.randn(3, 10) for _ in range(4))
    x = torch.rand(3, 3, 64, 64)
    xf = x.flip(-1)
    with torch.no_grad():
        out = flip_swap_reconstruction(dec, e_n, p_n, e_f, p_f, x, xf)
        ref = {
            "rec1": np.abs(dec.dec(e_f + p_n).double().numpy() - x.double().numpy()).mean(),
            "rec2": np.abs(dec.dec(e_n + p_f).double().numpy() - xf.double().numpy()).mean(),
            "rec3": np.abs(dec.dec(e_n + p_n).double().numpy() - x.double().numpy()).mean(),
            "rec4": np.abs(dec.dec(e_f + p_f).double().numpy() - xf.double().numpy()).mean(),
        }
    for k, v in ref.items():
        assert out[k].item() == pytest.approx(v, rel=1e-5)
    assert out["total"].item() == pytest.approx(sum(ref.values()), rel=1e-5)
    assert dec.batches[:4] == [3, 3, 3, 3]  # four separate decoder calls (BN statistics per call)


def test_flip_swap_pairs_the_swapped_codes_with_the_right_targets():
    # Targets made from the swapped codes: rec1 = |D(e_f + p_n) - s| and rec2 = |D(e_n + p_f) - s^| vanish.
    # Train-mode BN (a fresh decoder in eval mode hardly depends on its code); the same code batch gives
    # the same batch statistics, so the reconstruction of the matching code is exact.
    torch.manual_seed(7)
    dec = Decoder(10, 8, [4, 4, 4, 4, 4]).train()
    e_n, p_n, e_f, p_f = (torch.randn(4, 10) for _ in range(4))
    with torch.no_grad():
        s, s_hat = dec(e_f + p_n), dec(e_n + p_f)
        out = flip_swap_reconstruction(dec, e_n, p_n, e_f, p_f, s, s_hat)
    assert out["rec1"].item() == 0 and out["rec2"].item() == 0
    assert out["rec3"].item() > 1e-2 and out["rec4"].item() > 1e-2


def test_flip_swap_reconstruction_subset_of_terms():
    """The "w/o flip-swap" ablation's terms=("rec3", "rec4") equal those terms of the full loss."""
    torch.manual_seed(9)
    dec = CountingDecoder(Decoder(10, 8, [4, 4, 4, 4, 4]).eval())
    e_n, p_n, e_f, p_f = (torch.randn(3, 10) for _ in range(4))
    x = torch.rand(3, 3, 64, 64)
    with torch.no_grad():
        full = flip_swap_reconstruction(dec, e_n, p_n, e_f, p_f, x, x.flip(-1))
        dec.batches.clear()
        own = flip_swap_reconstruction(dec, e_n, p_n, e_f, p_f, x, x.flip(-1), terms=("rec3", "rec4"))
    assert set(own) == {"rec3", "rec4", "total"} and dec.batches == [3, 3]
    for k in ("rec3", "rec4"):
        assert torch.equal(own[k], full[k])
    assert own["total"].item() == pytest.approx(full["rec3"].item() + full["rec4"].item(), rel=1e-6)
    with pytest.raises(ValueError, match="rec5"):
        flip_swap_reconstruction(dec, e_n, p_n, e_f, p_f, x, x.flip(-1), terms=("rec3", "rec5"))


def test_flip_swap_reconstruction_size_mismatch():
    dec = Decoder(10, 8, [4, 4, 4, 4, 4])
    codes = [torch.randn(2, 10) for _ in range(4)]
    x = torch.rand(2, 3, 32, 32)
    with pytest.raises(ValueError, match="resize the targets"):
        flip_swap_reconstruction(dec, *codes, x, x)


def test_losses_stay_float32_under_autocast():
    torch.manual_seed(8)
    z1, z2 = torch.randn(4, 8), torch.randn(4, 8)
    zp, zn = torch.randn(2, 2, 8), torch.randn(2, 5, 8)
    x, y = torch.randn(4, 16), torch.randn(4, 16)

    def all_losses():
        return (FaceContrastiveLoss(T, 1.6)(z1, z2, generator=gen(0)),
                PoseContrastiveLoss(T, 1.6)(zp, zn, generator=gen(0)), DifferenceLoss()(x, y))

    ref = all_losses()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = all_losses()
    for g, r in zip(got, ref):
        assert g.dtype == torch.float32 and torch.equal(g, r)
