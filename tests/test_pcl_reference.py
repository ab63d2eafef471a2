"""PCL's steps against an independent, hand-written float64 reference of the authors' released code,
and the step-by-step entry points (PCL.pfe_step_views, face_step_views, pose_step_views).

The reference below is written from facts, not from pclbench's code:

- docs/method.md §1.4: pose_fc = Linear, ReLU, Linear, BatchNorm1d;
  2.1-2.4: noisy pfe inputs, the four flip-swap L1 terms, L_orth (centre over the batch, divide each
  row by its detached norm + 1e-6, mean of (X^T Y)^2); 2.6: the pose loss, its chunked negatives,
  Beta mixup with one permutation shared by all anchors, T = 0.07, cross-entropy with target 0.
- the authors' repository DreamMr/PCL @ 6e71d41, Models/networks.py ``ExpPoseModel.forward``: state
  'pose' runs encoder + pose_fc on the positives and then, in a SECOND call, on the negatives (two
  BatchNorm batches); state 'pfe' calls the decoder on D(e_n + p_f), D(e_f + p_n), D(e_n + p_n),
  D(e_f + p_f), i.e. rec2, rec1, rec3, rec4. Models/exppose.py ``forward``: positives = the two
  view tensors concatenated (view 1 of every image, then view 2), negatives = the K view tensors of
  shape (P, ...) concatenated (row k P + s); ``neg_inter_info_nce_loss_pose``: the negative rows cut
  into P chunks of K, Beta lambdas of shape (P, K), i.e. one per image and slot, the mixed set
  normalised and then used by both views of the image.
- PyTorch docs, torch.nn.BatchNorm1d: training mode normalises with the batch mean and the BIASED
  batch variance, eps 1e-5; the running statistics move by momentum 0.1 towards the batch mean and
  the UNBIASED batch variance, once per call.

The encoder (trunk + heads, no normalisation layer: docs/method.md §1.1) is used as is, from a deep copy:
it is not what these tests are about. Everything else (pose_fc with its BatchNorm, the negative sets,
the mixup, the InfoNCE, L_orth, the L1 terms) is written out by hand in float64.
"""
from __future__ import annotations

import copy

import pytest
import torch

from pclbench.pretrain.losses import pose_contrastive_loss, sample_beta
from pclbench.pretrain.methods import METHODS
from pclbench.models import ModelConfig
from pclbench.pretrain.views import (add_noise, apply_face_views, apply_pose_views, draw_face_views, draw_pose_views,
                            resize)

from tiny_sections import MODEL, PCL, VIEWS

torch.set_num_threads(2)

T = 0.07
P, K = 3, 4  # pose images, negatives per image
FAITHFUL = {"pose_negatives": "faithful", "optimizer": "faithful", "pose_fc_batches": "faithful",
            "pose_mixup_lambdas": "faithful", "decoder_order": "faithful"}
FIXED = {k: "fixed" for k in FAITHFUL}
ROUNDING = {"rtol": 1e-10, "atol": 1e-12}  # float64 rounding, with room for different summation orders


def assert_grads_close(got: dict, ref: dict) -> None:
    """Every reference gradient to float64 rounding. Entries that are zero in exact arithmetic
    (e.g. the bias in front of a BatchNorm) carry cancellation noise of the order of the gradients'
    size, so the absolute tolerance is scaled by the largest reference gradient."""
    scale = max(float(g.abs().max()) for g in ref.values())
    for name, g in ref.items():
        assert got[name] is not None, name
        torch.testing.assert_close(got[name], g, rtol=1e-10, atol=1e-12 * max(scale, 1.0),
                                   msg=lambda m: f"{name}: {m}")


def build(pcl=None, seed=0, dtype=torch.float64):
    torch.manual_seed(seed)
    cfg = {"pcl": {**PCL, "pose_batch": P, "n_negatives": K, **(pcl or {})}, "views": VIEWS}
    return METHODS.get("pcl")(cfg, ModelConfig.from_config(MODEL), 64).to(dtype)


def pose_inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    pos = torch.rand(P, 2, 3, 64, 64, generator=g, dtype=torch.float64)
    neg = torch.rand(P, K, 3, 64, 64, generator=g, dtype=torch.float64)
    lam = sample_beta(1.6, (P, K), g, "cpu").double()  # one per image and slot (the authors' shape)
    perm = torch.tensor([2, 0, 3, 1])  # one permutation of the K slots, not the identity
    return pos, neg, lam, perm


# --------------------------------------------------------------------------------------------- reference


def ref_projection(x, prm, bn, momentum=0.1, eps=1e-5):
    """Linear, ReLU, Linear, BatchNorm1d (training mode) by hand; updates ``bn`` like one call."""
    h = torch.clamp(x @ prm["w1"].T + prm["b1"], min=0)
    y = h @ prm["w2"].T + prm["b2"]  # (N, D)
    n = y.shape[0]
    mu = y.sum(0) / n
    var = ((y - mu) ** 2).sum(0) / n  # biased: used to normalise
    bn["mean"] = (1 - momentum) * bn["mean"] + momentum * mu.detach()
    bn["var"] = (1 - momentum) * bn["var"] + momentum * var.detach() * n / (n - 1)  # unbiased
    bn["calls"] += 1
    return (y - mu) / torch.sqrt(var + eps) * prm["gamma"] + prm["beta"]


def unit(v):
    return v / v.norm()


def ref_pose_loss(enc, prm, bn, pos, neg, lam, perm, *, bn_calls, negatives):
    """The pose step's loss, anchor by anchor. ``lam (P, K)``: shared by an image's two views;
    ``(2P, K)``: one row per anchor (anchor a = view v of image s, a = v P + s)."""
    p, k = neg.shape[:2]
    feat = lambda imgs: enc.forward_pose(enc.forward_trunk(imgs)).flatten(1)  # noqa: E731
    collated_pos = torch.cat([pos[:, 0], pos[:, 1]])  # (2P, ...): row v P + s
    collated_neg = torch.cat([neg[:, j] for j in range(k)])  # (K P, ...): row j P + s
    if bn_calls == 2:  # the authors: two calls, positives first
        f_pos = ref_projection(feat(collated_pos), prm, bn)
        f_neg = ref_projection(feat(collated_neg), prm, bn)
    else:  # one BatchNorm batch over everything
        f = ref_projection(feat(torch.cat([collated_pos, collated_neg])), prm, bn)
        f_pos, f_neg = f[: 2 * p], f[2 * p:]
    if negatives == "chunked":  # image s gets the s-th block of K consecutive rows
        sets = [[f_neg[s * k + j] for j in range(k)] for s in range(p)]
    else:  # image s gets its own K flipped views
        sets = [[f_neg[j * p + s] for j in range(k)] for s in range(p)]
    losses = []
    for v in (0, 1):
        for s in range(p):
            a = v * p + s
            q, key = unit(f_pos[v * p + s]), unit(f_pos[(1 - v) * p + s])
            w = lam[s] if lam.shape[0] == p else lam[a]
            mixed = [w[j] * sets[s][j] + (1 - w[j]) * sets[s][int(perm[j])] for j in range(k)]
            logits = torch.stack([q @ key] + [q @ unit(m) for m in mixed]) / T
            losses.append(-(logits[0] - torch.logsumexp(logits, 0)))
    return torch.stack(losses).mean()


def pose_fc_params(method):
    net = method.pose_fc.net
    prm = {"w1": net[0].weight, "b1": net[0].bias, "w2": net[2].weight, "b2": net[2].bias,
           "gamma": net[3].weight, "beta": net[3].bias}
    prm = {k: v.detach().clone().requires_grad_(True) for k, v in prm.items()}
    bn = {"mean": net[3].running_mean.clone(), "var": net[3].running_var.clone(), "calls": 0}
    return prm, bn


def run_reference_pose(method, pos, neg, lam, perm, weight, **how):
    enc = copy.deepcopy(method.encoder)
    enc.zero_grad(set_to_none=True)
    prm, bn = pose_fc_params(method)
    loss = weight * ref_pose_loss(enc, prm, bn, pos, neg, lam, perm, **how)
    loss.backward()
    grads = {f"pose_fc.{n}": prm[k].grad for n, k in (("net.0.weight", "w1"), ("net.0.bias", "b1"),
                                                      ("net.2.weight", "w2"), ("net.2.bias", "b2"),
                                                      ("net.3.weight", "gamma"), ("net.3.bias", "beta"))}
    grads |= {f"encoder.{n}": q.grad for n, q in enc.named_parameters() if q.grad is not None}
    assert any(n.startswith("encoder.pose_head.") for n in grads) and not any("face_head" in n for n in grads)
    return loss.detach(), grads, bn


def run_method_pose(method, pos, neg, draws, weight):
    method.zero_grad(set_to_none=True)
    loss, logs = method.pose_step_views(pos, neg, weight, draws)  # no optimiser: loss keeps its graph
    loss.backward()
    grads = {n: q.grad for n, q in method.named_parameters()}
    bn = method.pose_fc.net[3]
    return loss.detach(), logs, grads, {"mean": bn.running_mean, "var": bn.running_var,
                                        "calls": int(bn.num_batches_tracked)}


def assert_same_pose_step(got, ref):
    loss, _, grads, bn = got
    rloss, rgrads, rbn = ref
    torch.testing.assert_close(loss, rloss, **ROUNDING)
    assert_grads_close(grads, rgrads)
    # the same parameters are reached (not the face head, exp_fc or the decoder)
    assert {n for n, g in grads.items() if g is not None} == set(rgrads)
    torch.testing.assert_close(bn["mean"], rbn["mean"], **ROUNDING)
    torch.testing.assert_close(bn["var"], rbn["var"], **ROUNDING)
    assert bn["calls"] == rbn["calls"]


# --------------------------------------------------------------------------------------------- pose step


def test_faithful_pose_step_equals_the_authors_reference_to_float64_rounding():
    pos, neg, lam, perm = pose_inputs()
    method = build(FAITHFUL)
    ref = run_reference_pose(method, pos, neg, lam, perm, 0.7, bn_calls=2, negatives="chunked")
    got = run_method_pose(method, pos, neg, (lam, perm), 0.7)
    assert_same_pose_step(got, ref)
    assert got[3]["calls"] == 2  # two BatchNorm batches, two running-statistics updates
    assert float(got[1]["loss_pose"]) == pytest.approx(float(got[0]) / 0.7, rel=1e-12)


def test_fixed_pose_step_equals_the_one_batch_reference():
    """Default switches: one BatchNorm batch over positives and negatives, own flipped negatives,
    one lambda per anchor."""
    pos, neg, lam, perm = pose_inputs()
    lam2 = sample_beta(1.6, (2 * P, K), torch.Generator().manual_seed(9), "cpu").double()  # (2P, K)
    method = build(FIXED)
    ref = run_reference_pose(method, pos, neg, lam2, perm, 1.0, bn_calls=1, negatives="own")
    got = run_method_pose(method, pos, neg, (lam2, perm), 1.0)
    assert_same_pose_step(got, ref)
    assert got[3]["calls"] == 1


def test_one_batchnorm_batch_differs_from_the_authors_two():
    """pose_fc_batches alone: fixed does not match the two-call reference (loss, gradients, running
    statistics), and matches the one-call reference; so the test above can fail."""
    pos, neg, lam, perm = pose_inputs()
    method = build({**FAITHFUL, "pose_fc_batches": "fixed"})
    two = run_reference_pose(method, pos, neg, lam, perm, 1.0, bn_calls=2, negatives="chunked")
    one = run_reference_pose(method, pos, neg, lam, perm, 1.0, bn_calls=1, negatives="chunked")
    got = run_method_pose(method, pos, neg, (lam, perm), 1.0)
    assert_same_pose_step(got, one)
    assert abs(float(got[0]) - float(two[0])) > 1e-4 * abs(float(two[0]))
    g, r = got[2]["pose_fc.net.2.weight"].flatten(), two[1]["pose_fc.net.2.weight"].flatten()
    assert float(torch.nn.functional.cosine_similarity(g, r, dim=0)) < 0.999
    assert not torch.allclose(got[3]["mean"], two[2]["mean"])


def test_shared_lambdas_are_the_per_anchor_rule_with_repeated_rows():
    """pose_mixup_lambdas: faithful draws (P, K) and uses row s for both views of image s; fixed draws
    (2P, K). With the rows repeated they agree; with independent rows they do not."""
    pos, neg, lam, perm = pose_inputs()
    shared = run_method_pose(build(FAITHFUL), pos, neg, (lam, perm), 1.0)
    per_anchor = build({**FAITHFUL, "pose_mixup_lambdas": "fixed"})
    repeated = run_method_pose(per_anchor, pos, neg, (torch.cat([lam, lam]), perm), 1.0)
    torch.testing.assert_close(shared[0], repeated[0], **ROUNDING)
    assert_grads_close(repeated[2], {n: g for n, g in shared[2].items() if g is not None})
    other = torch.cat([lam, lam.flip(0)])  # the second view of image s gets another image's lambdas
    independent = run_method_pose(build({**FAITHFUL, "pose_mixup_lambdas": "fixed"}), pos, neg, (other, perm), 1.0)
    assert abs(float(independent[0]) - float(shared[0])) > 1e-6
    # each mode draws its own shape and refuses the other's
    g = torch.Generator().manual_seed(0)
    assert build(FAITHFUL).pose_loss.draw(P, K, g, "cpu")[0].shape == (P, K)
    assert build(FIXED).pose_loss.draw(P, K, g, "cpu")[0].shape == (2 * P, K)
    with pytest.raises(ValueError, match=r"lam \(3, 4\)"):
        build(FAITHFUL).pose_step_views(pos, neg, 1.0, (torch.cat([lam, lam]), perm))


def test_pose_loss_share_views_against_the_reference_formula():
    """Loss level (no BatchNorm): shared lambdas = the reference's per-image rows."""
    g = torch.Generator().manual_seed(4)
    z_pos, z_neg = torch.randn(P, 2, 5, generator=g, dtype=torch.float64), torch.randn(P, K, 5, generator=g,
                                                                                     dtype=torch.float64)
    lam = sample_beta(1.6, (P, K), g, "cpu").double()
    perm = torch.tensor([2, 0, 3, 1])
    got = pose_contrastive_loss(z_pos, z_neg, T, 1.6, draws=(lam, perm), share_views=True)
    want = []
    for v in (0, 1):
        for s in range(P):
            q, key = unit(z_pos[s, v]), unit(z_pos[s, 1 - v])
            mixed = [lam[s, j] * z_neg[s, j] + (1 - lam[s, j]) * z_neg[s, int(perm[j])] for j in range(K)]
            logits = torch.stack([q @ key] + [q @ unit(m) for m in mixed]) / T
            want.append(-(logits[0] - torch.logsumexp(logits, 0)))
    torch.testing.assert_close(got, torch.stack(want).mean(), **ROUNDING)
    assert got.dtype == torch.float64  # float64 is kept (losses compute float32 only for AMP outputs)


# --------------------------------------------------------------------------------------------- pfe step


def ref_diff(x, y):
    x = x - x.mean(0, keepdim=True)
    y = y - y.mean(0, keepdim=True)
    x = x / (x.norm(dim=1, keepdim=True).detach() + 1e-6)
    y = y / (y.norm(dim=1, keepdim=True).detach() + 1e-6)
    return ((x.T @ y) ** 2).mean()


AUTHORS_ORDER = ("rec2", "rec1", "rec3", "rec4")


def run_reference_pfe(method, noisy, x, x_flip, order):
    """L_pfe with two encoder calls (s, then s^) and the decoder called in ``order``."""
    enc, dec = copy.deepcopy(method.encoder), copy.deepcopy(method.decoder)
    b = x.shape[0]
    _, e_n, p_n = enc(noisy[:b])
    _, e_f, p_f = enc(noisy[b:])
    terms = {"rec1": (e_f, p_n, x), "rec2": (e_n, p_f, x_flip), "rec3": (e_n, p_n, x), "rec4": (e_f, p_f, x_flip)}
    rec = {}
    for name in order:  # the Decoder module L2-normalises the summed code itself (docs/method.md §1.5)
        e, p, target = terms[name]
        rec[name] = (dec(e + p) - target).abs().mean()
    loss = ref_diff(e_n, p_n) + ref_diff(e_f, p_f) + rec["rec1"] + rec["rec2"] + rec["rec3"] + rec["rec4"]
    loss.backward()
    grads = {f"encoder.{n}": q.grad for n, q in enc.named_parameters()}
    grads |= {f"decoder.{n}": q.grad for n, q in dec.named_parameters()}
    stats = {n: v.clone() for n, v in dec.state_dict().items() if "running" in n or "num_batches" in n}
    return loss.detach(), grads, stats


def run_method_pfe(method, noisy, x, x_flip):
    method.zero_grad(set_to_none=True)
    loss, logs = method.pfe_step_views(noisy, x, x_flip)
    loss.backward()
    stats = {n: v.clone() for n, v in method.decoder.state_dict().items() if "running" in n or "num_batches" in n}
    return loss.detach(), logs, {n: q.grad for n, q in method.named_parameters()}, stats


def test_decoder_call_order_gives_the_reference_running_statistics():
    g = torch.Generator().manual_seed(3)
    x = torch.rand(4, 3, 64, 64, generator=g, dtype=torch.float64)
    x_flip = x.flip(-1)
    noisy = torch.cat([x, x_flip]) + 0.4 * torch.randn(8, 3, 64, 64, generator=g, dtype=torch.float64)
    results = {}
    for mode in ("faithful", "fixed"):
        method = build({"decoder_order": mode})
        order = AUTHORS_ORDER if mode == "faithful" else ("rec1", "rec2", "rec3", "rec4")
        ref = run_reference_pfe(method, noisy, x, x_flip, order)
        got = run_method_pfe(method, noisy, x, x_flip)
        torch.testing.assert_close(got[0], ref[0], **ROUNDING)
        assert_grads_close(got[2], ref[1])
        for name, v in ref[2].items():
            torch.testing.assert_close(got[3][name], v, **ROUNDING, msg=lambda m: f"{name}: {m}")
        results[mode] = got
    # same loss and gradients in both orders; different running statistics (so the test can fail)
    torch.testing.assert_close(results["faithful"][0], results["fixed"][0], **ROUNDING)
    assert_grads_close(results["faithful"][2], {n: g for n, g in results["fixed"][2].items() if g is not None})
    mean = "bns.0.running_mean"
    assert not torch.allclose(results["faithful"][3][mean], results["fixed"][3][mean], rtol=1e-6, atol=0)
    # the logged terms are the same terms whatever the order
    for term in ("loss_rec1", "loss_rec2", "loss_rec3", "loss_rec4"):
        torch.testing.assert_close(results["faithful"][1][term], results["fixed"][1][term], **ROUNDING)


# --------------------------------------------------------------------------------------------- C.9


def replay_iteration(method, batches, opt, scaler, gen, w):
    """One iteration through the public step entry points, with the draws made by hand in the order
    of train_iteration: pfe noise; face view parameters and mixup; pose view parameters and mixup."""
    x = resize(batches["pfe"], 64)
    x_flip = x.flip(-1)
    noisy = add_noise(torch.cat([x, x_flip]), method.cfg.noise_std, gen)
    out = method.pfe_step_views(noisy, x, x_flip, opt, scaler)[1]
    f = batches["face"]
    vd = draw_face_views(f.shape, method.views, gen, f.device)
    draws = method.face_loss.draw(f.shape[0], gen, f.device)
    v1, v2 = apply_face_views(f, vd, method.views, 64)
    out |= method.face_step_views(v1, v2, w["face"], draws, opt, scaler)[1]
    p, k = batches["pose"], method.cfg.n_negatives
    vd = draw_pose_views(p.shape[0], k, method.views, gen, p.device)
    draws = method.pose_loss.draw(p.shape[0], k, gen, p.device)
    pos, neg = apply_pose_views(p, k, vd, method.views, 64)
    out |= method.pose_step_views(pos, neg, w["pose"], draws, opt, scaler)[1]
    return out


@pytest.mark.parametrize("switches", [FIXED, FAITHFUL], ids=["fixed", "faithful"])
def test_public_step_entry_points_equal_train_iteration(switches):
    runs = []
    for public in (False, True):
        method = build(switches, dtype=torch.float32)
        opt = torch.optim.Adam(method.parameters(), lr=1e-3, weight_decay=1e-3)
        scaler = torch.amp.GradScaler("cpu", enabled=False)
        gen = torch.Generator().manual_seed(1)
        logs = []
        for i in range(2):
            g = torch.Generator().manual_seed(10 + i)
            b = {"pfe": torch.rand(4, 3, 64, 64, generator=g), "face": torch.rand(4, 3, 72, 72, generator=g),
                 "pose": torch.rand(P, 3, 72, 72, generator=g)}
            w = method.loss_weights(1)
            if public:
                logs.append(replay_iteration(method, b, opt, scaler, gen, w))
            else:
                out = method.train_iteration(b, opt, scaler, 1, gen)
                logs.append({k: v for k, v in out.items() if not k.startswith("w_")})
        runs.append((logs, method.state_dict()))
    (la, sa), (lb, sb) = runs
    for a, b in zip(la, lb):
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), k
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def test_entry_points_without_optimizer_leave_the_parameters_alone():
    method = build(dtype=torch.float32)
    before = {n: q.detach().clone() for n, q in method.named_parameters()}
    pos, neg, lam, perm = (t.float() if t.is_floating_point() else t for t in pose_inputs())
    lam2 = torch.cat([lam, lam])
    loss, logs = method.pose_step_views(pos, neg, 2.0, (lam2, perm))
    assert loss.requires_grad and float(loss.detach()) == pytest.approx(2.0 * float(logs["loss_pose"]), rel=1e-6)
    assert all(torch.equal(before[n], q) for n, q in method.named_parameters())
    # with an optimiser: the step is taken and the returned loss is detached
    opt = torch.optim.SGD(method.parameters(), lr=0.1)
    loss2, _ = method.pose_step_views(pos, neg, 2.0, (lam2, perm), opt)
    assert not loss2.requires_grad
    assert not torch.equal(before["pose_fc.net.0.weight"], method.pose_fc.net[0].weight)


def test_entry_points_check_their_inputs():
    method = build(dtype=torch.float32)
    pos, neg = torch.rand(P, 2, 3, 64, 64), torch.rand(P, K, 3, 64, 64)
    with pytest.raises(ValueError, match="draws"):
        method.pose_step_views(pos, neg, 1.0, None)  # mixup is on: the draws are required
    with pytest.raises(ValueError, match="pose_step_views"):
        method.pose_step_views(pos[:, :1], neg, 1.0, None)
    with pytest.raises(ValueError, match="face_step_views"):
        method.face_step_views(torch.rand(4, 3, 72, 72), torch.rand(4, 3, 72, 72), 1.0, None)
    with pytest.raises(ValueError, match="pfe_step_views"):
        method.pfe_step_views(torch.rand(4, 3, 64, 64), torch.rand(4, 3, 64, 64), torch.rand(4, 3, 64, 64))


# --------------------------------------------------------------------------------------------- face loss


def ref_face_loss(z1, z2, lam, perm):
    """The face loss, anchor by anchor, in float64 (docs/method.md §2.5; DreamMr/PCL Models/exppose.py
    ``neg_inter_info_nce_loss``): anchors are the 2B rows of [z1; z2]; row i's positive is the other view
    of its image, its negatives are the other 2B - 2 rows in ascending order; negative slot j is mixed
    as lam[i, j] n_j + (1 - lam[i, j]) n_perm(j) BEFORE normalisation; logits = cosines / T;
    cross-entropy with target 0, mean over anchors."""
    z = torch.cat([z1, z2])
    n, b = z.shape[0], z1.shape[0]
    lam = lam.double()  # the lambdas' values, exactly
    losses = []
    for i in range(n):
        pair = (i + b) % n
        negs = [z[j] for j in range(n) if j not in (i, pair)]
        mixed = [lam[i, j] * negs[j] + (1 - lam[i, j]) * negs[int(perm[j])] for j in range(n - 2)]
        q = unit(z[i])
        logits = torch.stack([q @ unit(z[pair])] + [q @ unit(m) for m in mixed]) / T
        losses.append(-(logits[0] - torch.logsumexp(logits, 0)))
    return torch.stack(losses).mean()


def test_face_loss_with_float32_draws_is_float64_accurate():
    """FaceContrastiveLoss.draw makes float32 lambdas (sample_beta); on float64 features the loss and
    its gradients must still equal the float64 reference to float64 rounding. A side-by-side run
    against the authors' released code (their mixing is done on the float64 features themselves)
    found the closed form squaring the float32 lambdas in float32: agreement only to ~1e-9."""
    from pclbench.pretrain.losses import FaceContrastiveLoss

    g = torch.Generator().manual_seed(3)
    b, d = 4, 6
    z1 = torch.randn(b, d, generator=g, dtype=torch.float64, requires_grad=True)
    z2 = torch.randn(b, d, generator=g, dtype=torch.float64, requires_grad=True)
    loss_fn = FaceContrastiveLoss(T, 1.6)
    lam, perm = loss_fn.draw(b, g, "cpu")
    assert lam.dtype == torch.float32 and not torch.equal(perm, torch.arange(2 * b - 2))
    got = loss_fn(z1, z2, draws=(lam, perm))
    got_grads = torch.autograd.grad(got, (z1, z2))
    ref = ref_face_loss(z1, z2, lam, perm)
    ref_grads = torch.autograd.grad(ref, (z1, z2))
    torch.testing.assert_close(got, ref, **ROUNDING)
    for a, r in zip(got_grads, ref_grads):
        torch.testing.assert_close(a, r, **ROUNDING)


def test_face_step_float32_draws_equal_float64_draws():
    """The step-level consequence: a float64 PCL's face step with the float32 draws of face_loss.draw
    equals the same step with those lambdas passed as float64 (same values), to float64 rounding."""
    g = torch.Generator().manual_seed(4)
    v1, v2 = (torch.rand(4, 3, 64, 64, generator=g, dtype=torch.float64) for _ in range(2))
    out = []
    for as64 in (False, True):
        method = build(FAITHFUL)
        lam, perm = method.face_loss.draw(4, torch.Generator().manual_seed(5), "cpu")
        assert lam.dtype == torch.float32
        loss, _ = method.face_step_views(v1, v2, 1.3, (lam.double() if as64 else lam, perm))
        loss.backward()
        out.append((loss.detach(), {n: q.grad for n, q in method.named_parameters() if q.grad is not None}))
    (la, ga), (lb, gb) = out
    torch.testing.assert_close(la, lb, **ROUNDING)
    assert ga.keys() == gb.keys() and any(n.startswith("exp_fc.") for n in ga)
    assert_grads_close(ga, gb)
