"""PCL method (methods/pcl.py): the three-step iteration, gradient flow, optimiser modes, pose
negative sets and DWA (docs/method.md §2.5-2.8)."""
from __future__ import annotations

import copy
import math

import pytest
import torch

from pclbench.core.config import ConfigError
from pclbench.pretrain.methods import METHODS, PCLConfig, ablation_label, pose_negative_sets
from pclbench.models import ModelConfig

from tiny_sections import MODEL, PCL, VIEWS

torch.set_num_threads(2)

# All augmentations off: every pose view is then exactly the image (or its flip).
IDENTITY_VIEWS = {**VIEWS, "jitter_p": 0.0, "grayscale_p": 0.0, "blur_p": 0.0, "sobel_p": 0.0}


def build(pcl=None, views=None, seed=0):
    torch.manual_seed(seed)
    cfg = {"pcl": {**PCL, **(pcl or {})}, "views": views or VIEWS}
    return METHODS.get("pcl")(cfg, ModelConfig.from_config(MODEL), 64)


def batches(seed=0, b=4, p=2):
    g = torch.Generator().manual_seed(seed)
    return {"pfe": torch.rand(b, 3, 64, 64, generator=g), "face": torch.rand(b, 3, 64, 64, generator=g),
            "pose": torch.rand(p, 3, 64, 64, generator=g)}


def module_of(name: str) -> str:
    """Parameter name -> the module row of the gradient-flow table (2.7)."""
    if name.startswith("encoder.face_head."):
        return "face_head"
    if name.startswith("encoder.pose_head."):
        return "pose_head"
    if name.startswith("encoder."):
        return "trunk"
    return name.split(".")[0]


class RecordingAdam(torch.optim.Adam):
    """Adam that records, at every step, which parameters hold a gradient (and its size) and,
    after the step, which parameters moved."""

    def __init__(self, named_params, **kw):
        self.names = {id(p): n for n, p in named_params}
        super().__init__([p for _, p in named_params], **kw)
        self.records = []

    def step(self, closure=None):
        params = [p for g in self.param_groups for p in g["params"]]
        grads = {self.names[id(p)]: float(p.grad.abs().sum()) for p in params if p.grad is not None}
        before = {self.names[id(p)]: p.detach().clone() for p in params}
        out = super().step(closure)
        moved = {self.names[id(p)] for p in params if not torch.equal(before[self.names[id(p)]], p.detach())}
        self.records.append({"grads": grads, "moved": moved})
        return out


def run_iterations(method, n=1, epoch=1, lr=1e-3, wd=1e-3):
    opt = RecordingAdam(list(method.named_parameters()), lr=lr, weight_decay=wd)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    gen = torch.Generator().manual_seed(1)
    outs = [method.train_iteration(batches(seed=i), opt, scaler, epoch, gen) for i in range(n)]
    return opt, outs


def modules_with(names) -> set:
    return {module_of(n) for n in names}


ALL_MODULES = {"trunk", "face_head", "pose_head", "exp_fc", "pose_fc", "decoder"}
# docs/method.md §2.7: trunk <- all steps; face head <- pfe + exp; pose head <- pfe + pose; decoder <- pfe;
# exp_fc <- exp; pose_fc <- pose.
FLOW = [{"trunk", "face_head", "pose_head", "decoder"},  # pfe
        {"trunk", "face_head", "exp_fc"},  # face ("exp")
        {"trunk", "pose_head", "pose_fc"}]  # pose


def test_one_iteration_returns_all_losses():
    method = build()
    _, (out,) = run_iterations(method)
    assert set(out) == {"loss_pfe", "loss_orth", "loss_rec1", "loss_rec2", "loss_rec3", "loss_rec4",
                        "loss_face", "loss_pose", "w_face", "w_pose"}
    vals = {k: float(v) for k, v in out.items()}
    assert all(math.isfinite(v) for v in vals.values())
    # L_pfe = L_orth + w_rec * sum of the four reconstruction terms (2.4)
    rec = sum(vals[f"loss_rec{i}"] for i in range(1, 5))
    assert vals["loss_pfe"] == pytest.approx(vals["loss_orth"] + rec, rel=1e-5)
    assert vals["w_face"] == vals["w_pose"] == 1.0  # DWA weights are 1 in the first epochs


def test_recon_weight_scales_reconstruction_terms():
    a, b = build(), build(pcl={"recon_weight": 0.25})
    (_, (oa,)), (_, (ob,)) = run_iterations(a), run_iterations(b)
    rec = sum(float(ob[f"loss_rec{i}"]) for i in range(1, 5))
    assert float(ob["loss_pfe"]) == pytest.approx(float(ob["loss_orth"]) + 0.25 * rec, rel=1e-5)
    # same seed, same first step inputs: the unweighted terms agree
    assert float(oa["loss_rec1"]) == pytest.approx(float(ob["loss_rec1"]), rel=1e-6)


def test_three_steps_in_order_with_the_gradient_flow_table():
    method = build()
    opt, _ = run_iterations(method)
    assert len(opt.records) == 3
    for step, expected in zip(opt.records, FLOW):
        # fixed mode frees the gradients before each step: a parameter has one iff the step reached it
        assert modules_with(step["grads"]) == expected
        # every parameter of a reached module got a gradient, and the module's gradient is not zero
        for mod in expected:
            names = [n for n, _ in method.named_parameters() if module_of(n) == mod]
            assert all(n in step["grads"] for n in names), mod
            assert sum(step["grads"][n] for n in names) > 0, mod
        assert modules_with(step["moved"]) == expected


def test_optimizer_modes_fixed_leaves_unused_modules_faithful_moves_them():
    fixed, faithful = build(pcl={"optimizer": "fixed"}), build(pcl={"optimizer": "faithful"})
    fx, _ = run_iterations(fixed, n=2)
    ff, _ = run_iterations(faithful, n=2)
    # fixed: in both iterations each step moves exactly the modules of the gradient-flow table
    for step, expected in zip(fx.records, FLOW * 2):
        assert modules_with(step["moved"]) == expected
    # faithful (zero_grad(set_to_none=False) + coupled weight decay, 2.7): once a parameter has had a
    # gradient, every later step moves it. Iteration 1: pfe moves the table's modules; face also
    # moves the decoder and pose head (grads zeroed, not freed) but not pose_fc (never had a grad);
    # pose moves everything. From iteration 2 on, every step moves every module.
    moved = [modules_with(s["moved"]) for s in ff.records]
    assert moved[0] == FLOW[0]
    assert moved[1] == ALL_MODULES - {"pose_fc"}
    assert "decoder" in moved[1] and "decoder" not in modules_with(fx.records[1]["moved"])
    assert moved[2] == ALL_MODULES
    assert moved[3] == moved[4] == moved[5] == ALL_MODULES
    # the zeroed gradients are there (zero) in faithful mode, absent in fixed mode
    assert ff.records[4]["grads"]["decoder.fc.weight"] == 0.0
    assert "decoder.fc.weight" not in fx.records[4]["grads"]


def test_pose_negative_sets_against_a_hand_written_collate_and_chunk():
    p, k = 3, 4
    labels = torch.tensor([[[s, j] for j in range(k)] for s in range(p)])  # (P, K, 2): (sample, view)
    assert torch.equal(pose_negative_sets(labels, "fixed"), labels)
    # Authors: the collated negatives are a list of K tensors of shape (P, ...); torch.cat gives row
    # k*P + s; the loss splits the rows into P chunks of K.
    collated = [torch.stack([labels[s, j] for s in range(p)]) for j in range(k)]
    rows = torch.cat(collated, dim=0)  # (K P, 2)
    chunks = torch.stack(list(torch.split(rows, k)))  # (P, K, 2)
    assert torch.equal(pose_negative_sets(labels, "faithful"), chunks)
    # known answer of docs/method.md (P = 10, K = 100): chunk j = views 10j..10j+9 of every image
    lab = torch.stack(torch.meshgrid(torch.arange(10), torch.arange(100), indexing="ij"), dim=-1)  # (10, 100, 2)
    out = pose_negative_sets(lab, "faithful")
    for j in range(10):
        assert set(map(tuple, out[j].tolist())) == {(s, v) for s in range(10) for v in range(10 * j, 10 * j + 10)}
    with pytest.raises(ValueError, match="mode"):
        pose_negative_sets(lab, "wrong")


@pytest.mark.parametrize("mode", ["fixed", "faithful"])
def test_pose_step_feeds_the_loss_the_configured_negative_sets(mode):
    """End to end through the method: with all augmentations off, the negatives of image s are
    exactly flip(s); check which image each negative slot of the loss comes from."""
    p, k = 2, 4
    method = build(pcl={"pose_negatives": mode, "n_negatives": k, "pose_batch": p}, views=IDENTITY_VIEWS)
    seen = {}
    method.encoder.conv1.register_forward_pre_hook(lambda m, a: seen.__setitem__("images", a[0].detach()))
    method.pose_fc.register_forward_hook(lambda m, a, o: seen.__setitem__("z", o.detach()))
    loss_forward = method.pose_loss.forward

    def spy(z_pos, z_neg, generator=None, draws=None):
        seen["z_pos"], seen["z_neg"] = z_pos.detach(), z_neg.detach()
        return loss_forward(z_pos, z_neg, generator, draws)

    method.pose_loss.forward = spy
    x = torch.rand(p, 3, 64, 64)
    opt = torch.optim.Adam(method.parameters(), lr=1e-3)
    method.pose_step(x, 1.0, opt, torch.amp.GradScaler("cpu", enabled=False), torch.Generator().manual_seed(0))
    imgs = seen["images"]  # (P (2 + K), 3, 64, 64)
    for s in range(p):
        assert torch.equal(imgs[2 * s], x[s]) and torch.equal(imgs[2 * s + 1], x[s])
        for j in range(k):
            assert torch.equal(imgs[2 * p + s * k + j], x[s].flip(-1))
    z = seen["z"]
    assert torch.equal(seen["z_pos"], z[: 2 * p].reshape(p, 2, -1))
    feat_of_flip = [z[2 * p + s * k] for s in range(p)]  # all K views of image s are identical
    for anchor in range(p):
        for slot in range(k):
            src = anchor if mode == "fixed" else (anchor * k + slot) % p  # row k*P + s, chunk of K
            assert torch.allclose(seen["z_neg"][anchor, slot], feat_of_flip[src])


def test_dwa_weights_follow_the_epoch_means():
    method = build()
    means = {1: (4.0, 5.0), 2: (3.0, 4.5), 3: (2.0, 4.4)}
    for e in (1, 2):
        assert method.loss_weights(e) == {"face": 1.0, "pose": 1.0}
        method.epoch_end(e, {"loss_face": means[e][0], "loss_pose": means[e][1], "loss_pfe": 9.0})
    # closed form (2.8): r_k = L_k(t-1) / L_k(t-2), w_k = 2 exp(r_k / T) / sum_j exp(r_j / T), T = 2
    rf, rp = 3.0 / 4.0, 4.5 / 5.0
    wf = 2 * math.exp(rf / 2) / (math.exp(rf / 2) + math.exp(rp / 2))
    w = method.loss_weights(3)
    assert w["face"] == pytest.approx(wf) and w["pose"] == pytest.approx(2 - wf)
    # the weights are applied to the face / pose steps of train_iteration
    got = {}
    method.face_step = lambda x, weight, *a: got.__setitem__("face", weight) or {"loss_face": torch.tensor(1.0)}
    method.pose_step = lambda x, weight, *a: got.__setitem__("pose", weight) or {"loss_pose": torch.tensor(1.0)}
    method.pfe_step = lambda *a: {}
    out = method.train_iteration(batches(), None, None, 3, None)
    assert got == pytest.approx(w) and float(out["w_face"]) == pytest.approx(wf)
    # the DWA history is the method's extra state
    other = build()
    other.load_extra_state(copy.deepcopy(method.extra_state()))
    assert other.loss_weights(3) == w
    method.epoch_end(3, {"loss_face": means[3][0], "loss_pose": means[3][1]})
    assert other.loss_weights(3) == method.loss_weights(3)


def test_dwa_disabled_keeps_unit_weights():
    method = build(pcl={"dwa": {"enabled": False, "temperature": 2.0, "start": 2}})
    for e in (1, 2, 3):
        method.epoch_end(e, {"loss_face": 5.0 - e, "loss_pose": 1.0 + e})
    assert method.loss_weights(5) == {"face": 1.0, "pose": 1.0}


def test_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="pcl.bogus"):
        PCLConfig.from_config({**PCL, "bogus": 1})
    with pytest.raises(ConfigError, match="pcl.pose_negatives"):
        PCLConfig.from_config({**PCL, "pose_negatives": "sometimes"})
    with pytest.raises(ConfigError, match="pcl.dwa.temperature"):
        PCLConfig.from_config({**PCL, "dwa": {"enabled": True, "start": 2}})
    with pytest.raises(ConfigError, match="pcl.n_negatives"):
        PCLConfig.from_config({**PCL, "n_negatives": 0})
    with pytest.raises(ConfigError, match="img_size"):
        METHODS.get("pcl")({"pcl": PCL, "views": VIEWS}, ModelConfig.from_config(MODEL), 100)


# ---------------------------------------------------------------------------------------------
# ablations (pcl.ablation, dwa.enabled, neg_alpha; the `variants` of config.yaml)


def ablated(**flags):
    return build(pcl={"ablation": {**PCL["ablation"], **flags}})


def test_ablation_without_pdd_skips_the_pfe_step_and_leaves_the_decoder():
    method = ablated(pdd=False)
    assert method.batch_sizes(4) == {"face": 4, "pose": 2}
    before = copy.deepcopy(method.decoder.state_dict())
    opt, (out,) = run_iterations(method)
    assert len(opt.records) == 2  # face, pose
    assert [modules_with(s["moved"]) for s in opt.records] == FLOW[1:]
    assert not any(k.startswith(("loss_pfe", "loss_orth", "loss_rec")) for k in out)
    assert all(torch.equal(v, method.decoder.state_dict()[k]) for k, v in before.items())


def test_ablation_without_orth_drops_l_orth_from_l_pfe():
    full, method = build(), ablated(orth=False)
    (_, (of,)), (_, (oa,)) = run_iterations(full), run_iterations(method)
    rec = sum(float(oa[f"loss_rec{i}"]) for i in range(1, 5))
    assert float(oa["loss_orth"]) > 0
    assert float(oa["loss_pfe"]) == pytest.approx(rec, rel=1e-6)
    assert float(of["loss_pfe"]) == pytest.approx(float(of["loss_orth"]) + rec, rel=1e-5)  # same first step


def test_ablation_without_flip_swap_keeps_only_the_own_code_terms():
    full, method = build(), ablated(flip_swap=False)
    (_, (of,)), (_, (oa,)) = run_iterations(full), run_iterations(method)
    assert {k for k in oa if k.startswith("loss_rec")} == {"loss_rec3", "loss_rec4"}
    # same seed and inputs: rec3 / rec4 equal the full method's, and L_pfe = L_orth + rec3 + rec4
    assert float(oa["loss_rec3"]) == pytest.approx(float(of["loss_rec3"]), rel=1e-6)
    assert float(oa["loss_rec4"]) == pytest.approx(float(of["loss_rec4"]), rel=1e-6)
    assert float(oa["loss_pfe"]) == pytest.approx(float(oa["loss_orth"]) + float(oa["loss_rec3"])
                                                  + float(oa["loss_rec4"]), rel=1e-5)


def test_ablation_without_pose_step_leaves_pose_fc_and_keeps_unit_face_weight():
    method = ablated(pose_step=False)
    assert method.batch_sizes(4) == {"pfe": 4, "face": 4}
    before = {n: p.detach().clone() for n, p in method.named_parameters()}
    opt, (out,) = run_iterations(method)
    assert len(opt.records) == 2 and [modules_with(s["moved"]) for s in opt.records] == FLOW[:2]
    assert "loss_pose" not in out and "w_pose" not in out
    assert all(torch.equal(before[n], p) for n, p in method.named_parameters() if n.startswith("pose_fc."))
    # DWA has only the face task left: its weight stays 1 whatever the epoch means
    for e in (1, 2, 3):
        method.epoch_end(e, {"loss_face": 5.0 - e})
    assert method.loss_weights(5)["face"] == 1.0


def test_ablation_without_mixup_feeds_unmixed_negatives():
    method = build(pcl={"neg_alpha": 0.0})
    z1, z2 = torch.randn(3, 8), torch.randn(3, 8)
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(1)
    # no mixup: no random draw, so the loss does not depend on the generator
    assert float(method.face_loss(z1, z2, g1)) == float(method.face_loss(z1, z2, g2))
    mixed = build()
    assert float(mixed.face_loss(z1, z2, torch.Generator().manual_seed(0))) != \
        float(mixed.face_loss(z1, z2, torch.Generator().manual_seed(1)))


@pytest.mark.parametrize("variant, label", [("pcl_wo_pdd", "w/o PDD"), ("pcl_wo_orth", "w/o L_orth"),
                                            ("pcl_wo_flip_swap", "w/o flip-swap"), ("pcl_wo_pose_cl", "w/o pose CL"),
                                            ("pcl_wo_dwa", "w/o DWA"), ("pcl_wo_mixup", "w/o mixup")])
def test_ablation_variants_name_their_variant(repo_root, variant, label):
    """config `variants`: each ablation row changes exactly one setting of the pcl section, and the
    tables' footnote name (ablation_label) of the merged section is the paper's."""
    from pclbench.cli import load_config
    from pclbench.core.config import deep_merge

    base = load_config([repo_root / "config" / "config.yaml"])
    v = base["variants"][variant]
    assert v["method"] == "pcl" and set(v["overrides"]) == {"pcl"}
    pcl = deep_merge(base["pcl"], v["overrides"]["pcl"])
    assert ablation_label(base["pcl"]) == "full" and ablation_label(pcl) == label
    PCLConfig.from_config(pcl)  # a valid section
    diff = [k for k in pcl if pcl[k] != base["pcl"][k]]
    assert len(diff) == 1
    assert ablation_label({k: x for k, x in pcl.items() if k != "ablation"}) in ("full", label)


def test_faithful_variant_switches_every_faithful_option(repo_root):
    from pclbench.cli import load_config
    from pclbench.core.config import deep_merge

    base = load_config([repo_root / "config" / "config.yaml"])
    o = base["variants"]["pcl_faithful"]["overrides"]
    switches = ("pose_negatives", "optimizer", "pose_fc_batches", "pose_mixup_lambdas", "decoder_order")
    merged = deep_merge(base["pcl"], o["pcl"])
    PCLConfig.from_config(merged)  # a valid section
    # every faithful|fixed key of the pcl section is switched (a new switch cannot be forgotten here)
    assert {k for k, v in base["pcl"].items() if v in ("fixed", "faithful")} == set(switches)
    assert all(merged[k] == "faithful" for k in switches)
    assert deep_merge(base["views"], o["views"])["sobel_overflow"] == "faithful"
    # the default is the fixed behaviour everywhere
    assert all(base["pcl"][k] == "fixed" for k in switches) and base["views"]["sobel_overflow"] == "fixed"
