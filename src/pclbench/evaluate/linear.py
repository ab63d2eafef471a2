"""Generic linear probe on cached (frozen) features, with validation-only model selection.

docs/method.md §4 describes the authors' probes: a Linear layer trained on frozen trunk features
re-computed every epoch (FER, 4.1), BatchNorm1d + Linear with L1 loss (pose, 4.2), BatchNorm1d + Linear +
sigmoid with BCE (AU, A.1). Section 6.1 item 1 lists their flaw: the reported number is the best TEST
epoch. Here (the clean protocol, section 7 "fixed" mode):

* Features are cached once (stage 4) -- with no augmentation, re-encoding every epoch gives the same
  inputs, only slower (``benchmarks/probe.py`` measures the difference).
* ``probe.standardize``: features are standardised with the statistics of the data the probe is fit
  on (per-dimension mean and std; a constant dimension gets std 1). The authors' FER probe uses no
  normalisation; their pose and AU heads use BatchNorm1d. At evaluation time BatchNorm1d (running
  mean mu, variance s^2, affine g, b) followed by Linear(W, c) is the affine map
  ``W diag(g / s) (x - mu) + W b + c``, i.e. exactly "standardise with (mu, s), then a Linear layer":
  the two heads span the same functions. Only the training dynamics differ (BN normalises with
  batch statistics while training).
* Losses: softmax cross-entropy (expression), per-label sigmoid BCE averaged over labels and
  samples without positive weighting (AU, as A.1), L1 (pose, 4.2). For L1 the targets can be
  standardised per column with the fit set's statistics (``standardize_targets``) and the outputs
  mapped back; since every output column has its own weights, this is L1 in the original units
  with a per-column rescaled weight decay, and it lets a few hundred Adam steps reach
  coefficients of tens of degrees.
* Optimisers (``tasks.<task>.train.optimizer``): ``lbfgs`` = full-batch L-BFGS with a strong-Wolfe
  line search (up to ``LBFGS_MAX_EVAL`` loss evaluations; torch's default leaves it none when one
  iteration runs per call, which froze the probe), one iteration per "epoch", plus the L2 penalty
  0.5 * wd * ||W||^2; given enough iterations it reaches the
  regularised optimum of the convex CE/BCE problems, so the result does not depend on the optimiser
  path. ``adam`` (coupled L2 weight decay, as the authors' Adam) and ``adamw`` (decoupled), full- or
  mini-batch with a cosine or constant schedule; needed for L1, which is not smooth. Full-batch Adam
  behaves like sign descent: it grows the weights of pure-noise dimensions as fast as informative
  ones, so it relies on the epoch selection more than L-BFGS does.
* By default the linear layer starts at zero, so the seed only draws the validation split and the
  mini-batch order (full-batch L-BFGS is deterministic), and the bias is not weight-decayed.
  ``tasks.<task>.train`` can instead reproduce the authors' loops (docs/method.md §4.1, 4.2, A.1):
  ``init`` (N(0, 0.01) weights for FER, nn.Linear's default for the pose / AU heads), ``shuffle``
  (false = their unshuffled FER / AU loaders), ``decay_bias`` (their pose AdamW decays every
  parameter), ``lr_step: epoch`` (their CosineAnnealingLR stepped once per epoch), ``eval_every: 1``
  (they score the test set after every epoch) and ``standardize`` per task (config/paper.yaml sets
  them). Their BatchNorm1d is represented by the standardisation: the same function at evaluation
  time, but not the same training dynamics (batch statistics, decayed affine parameters).
* Hyperparameters -- learning rate, weight decay (grids) and the epoch (every ``eval_every`` epochs
  and the last) -- are selected on a validation split carved from the TRAINING data
  (:mod:`pclbench.evaluate.splits`, subject-disjoint when subjects exist). The test set is never
  scored during selection.
* ``probe.refit``: ``train_val`` retrains the selected (lr, weight decay) on train + validation
  with the same schedule, stopped at the selected epoch, and reports that model on test (uses all
  labelled training data, the usual final step); ``train_only`` reports the selected train-only
  model itself.
* ``probe.protocol: paper`` reproduces the authors' selection instead (4.1, 4.2, A.1): no validation
  split, the probe trains on all training data and the TEST score of every checkpoint of the grid is
  computed; the best one is reported (optimistic by construction: the clean ``train_val`` model is
  one of its candidates). Result files say which protocol produced them.

The selection keeps a per-checkpoint :class:`Record` of outputs and :func:`select_checkpoint` picks
one by its score (validation score for ``clean``, test score for ``paper``).
"""
from __future__ import annotations

import itertools
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Optional, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from pclbench.core.config import ConfigError, setting
from pclbench.core.device import resolve_device
from pclbench.align.shards import MANIFEST, read_manifest
from pclbench.evaluate.extract import READOUTS as STORED_READOUTS
from pclbench.evaluate.splits import carve_validation

log = logging.getLogger(__name__)

Loss = Literal["ce", "bce", "l1"]
ScoreFn = Callable[[np.ndarray, np.ndarray], float]


# The readouts a probe can read: the ones the feature cache stores (pclbench.evaluate.extract) and
# "concat" = [face, pose] (the two disentangled heads side by side)
CONCAT = ("face", "pose")
READOUTS = (*STORED_READOUTS, "concat")


@dataclass
class ProbeConfig:
    """Section ``probe``: settings shared by every task (docs/method.md §4, 6.1 item 1)."""

    readouts: list[str] = setting("Cached features probed, every one in the same job; trunk = the authors' choice; "
                                  "concat = [face, pose].",
                                  choices=READOUTS, minItems=1, uniqueItems=True)
    n_seeds: int = setting("Seeds per readout (master seed + k, k < n_seeds); mean +- sample std over them.",
                           minimum=1)
    protocol: Literal["clean", "paper"] = setting(
        "clean = selection on validation, test scored once; paper = the authors' best test epoch.")
    device: str = setting("torch device of the probes: auto | cpu | cuda | cuda:<index>",
                          pattern=r"^(auto|cpu|cuda(:[0-9]+)?)$")
    standardize: bool = setting("Standardise features with the fit set's statistics.")
    refit: Literal["train_val", "train_only"] = setting(
        "Retrain the selected setting on train+val, or keep the train-only model.")
    val_fraction: float = setting("Share of the training data carved out as (subject-disjoint) validation.",
                                  exclusiveMinimum=0, exclusiveMaximum=1)
    num_threads: int = setting("torch CPU threads while a probe runs; 0 = torch's setting.", minimum=0)

    def describe(self) -> str:
        """One line for result files and table footnotes (``protocol_description``)."""
        feats = f"features {'standardised' if self.standardize else 'raw'}"
        if self.protocol == "paper":
            return ("paper protocol (the authors' selection, docs/method.md §4.1 / 6.1 item 1): trained on all "
                    "training data, the test set scored at every evaluation epoch of every (lr, weight decay), "
                    f"the BEST TEST score reported (optimistic); {feats}")
        refit = ("refit on train+validation at the selected setting" if self.refit == "train_val"
                 else "train-only model at the selected setting")
        return (f"clean protocol: (lr, weight decay, epoch) selected on {self.val_fraction:.0%} of the training "
                f"data carved as validation (subject-disjoint when subjects are known), {refit}; test scored "
                f"once; {feats}")


INITS = ("zeros", "normal", "torch_default")


@dataclass
class TrainConfig:
    """Section ``tasks.<task>.train``: optimisation of one linear probe and its selection grid.

    Five keys reproduce the authors' probe loops (docs/method.md §4.1, 4.2, A.1; their main.py
    ``linear_eval`` for FER, main_pose.py ``linear_eval`` for pose): ``lr_step`` (their
    CosineAnnealingLR is stepped once per epoch), ``init`` (FER: weight N(0, 0.01), bias 0; the
    BatchNorm1d + Linear heads of pose and AU keep nn.Linear's default init), ``shuffle`` (FER and AU
    loaders: shuffle=False, i.e. the data-list order every epoch; pose: shuffle=True), ``decay_bias``
    (pose: AdamW over all parameters, so the bias is decayed too) and ``standardize`` (FER: raw
    features; pose and AU: BatchNorm1d, whose evaluation-time map is a standardisation).
    """

    optimizer: Literal["lbfgs", "adam", "adamw"] = setting("lbfgs needs batch_size 0 and lr_schedule constant.")
    lr_grid: list[float] = setting("Learning rates tried, selected on validation.",
                                   items={"type": "number", "exclusiveMinimum": 0}, minItems=1)
    weight_decay_grid: list[float] = setting("Weight decays tried, selected on validation (bias not decayed).",
                                             items={"type": "number", "minimum": 0}, minItems=1)
    epochs: int = setting("Passes over the fit set.", minimum=1)
    batch_size: int = setting("Samples per step; 0 = full batch.", minimum=0)
    lr_schedule: Literal["cosine", "constant"] = setting("Learning-rate schedule over the epochs.")
    lr_step: Literal["step", "epoch"] = setting(
        "Cosine updated every optimiser step, or once per epoch (the authors' CosineAnnealingLR).")
    eval_every: int = setting("Selection checkpoints every this many epochs (and the last). The authors 1.",
                              minimum=1)
    init: Literal["zeros", "normal", "torch_default"] = setting(
        "Start of the Linear layer (INITS); normal = N(0, 0.01) weights, zero bias (the authors' FER); "
        "torch_default = nn.Linear's init (their pose / AU heads).")
    shuffle: bool = setting(
        "New random sample order every epoch; false = data order (the authors' FER / AU loaders).")
    decay_bias: bool = setting("Weight decay on the bias too (the authors' pose AdamW over all parameters).")
    standardize: Optional[bool] = setting("null = probe.standardize; true / false overrides it for this task.")

    def check(self, where: str) -> "TrainConfig":
        """The cross-field constraint a JSON schema does not state (types and ranges are the schema's,
        checked at the boundary by :func:`pclbench.core.config.from_dict`): lbfgs needs full batches
        and a constant learning rate. Raises ConfigError naming ``where``."""
        if self.optimizer == "lbfgs" and (self.batch_size != 0 or self.lr_schedule != "constant"):
            raise ConfigError(f"{where}: optimizer lbfgs is full-batch with a line search: it needs "
                              f"batch_size 0 and lr_schedule constant, got {self.batch_size} and "
                              f"{self.lr_schedule!r}")
        return self


LBFGS_MAX_EVAL = 25  # loss evaluations one L-BFGS iteration (its line search) may use


def standardizer(x: torch.Tensor, standardize: bool) -> Callable[[torch.Tensor], torch.Tensor]:
    """``t -> (t - mean) / std`` with the per-dimension statistics of the fit set ``x`` (N, D);
    the identity when ``standardize`` is off. A constant dimension keeps std 1.

    Applied once per fit set (a standardised copy) rather than inside the model: re-standardising
    the full batch at every step costs more than the linear layer itself."""
    if not standardize:
        return lambda t: t
    mean = x.mean(dim=0)  # (D,)
    std = x.std(dim=0, unbiased=False)
    inv = torch.where(std > 1e-8, 1.0 / std, torch.ones_like(std))
    return lambda t: (t - mean) * inv


def _loss(loss: Loss, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    if loss == "ce":
        return F.cross_entropy(out, y)
    if loss == "bce":
        return F.binary_cross_entropy_with_logits(out, y)
    return F.l1_loss(out, y)


@dataclass
class Checkpoint:
    """Outputs of one trained probe at one epoch, on each evaluation set (in target units)."""

    epoch: int
    outputs: dict[str, np.ndarray]


@torch.no_grad()
def _predict(model: torch.nn.Module, x: torch.Tensor, batch: int) -> torch.Tensor:
    model.eval()
    outs = [model(x[i:i + batch]) for i in range(0, len(x), batch)]
    model.train()
    return torch.cat(outs) if outs else torch.zeros(0)


def optimise_linear(model: torch.nn.Linear, batch_loss: Callable[[Any], torch.Tensor], n: int, *, lr: float,
                    weight_decay: float, cfg: TrainConfig, seed: int, stop_epoch: int | None,
                    evaluate: Callable[[int], Any], generator: torch.Generator | None = None) -> list:
    """The probes' optimisation of one Linear layer: ``batch_loss(idx)`` is the loss of the samples
    ``idx`` (``slice(None)`` = all ``n``); returns ``evaluate(epoch)`` at every ``cfg.eval_every``-th
    epoch and the last one. The bias is decayed only with ``cfg.decay_bias``.

    The learning-rate schedule always spans ``cfg.epochs`` epochs; ``stop_epoch`` ends training
    early (refit at a selected epoch sees the same schedule as the selection run). Mini-batches:
    ``cfg.shuffle`` draws a new order every epoch from ``generator`` (default: a CPU generator
    seeded ``seed``); otherwise the samples go in their data order, the last batch smaller
    (drop_last=False, as the authors' loaders). ``cfg.lr_step``: a cosine schedule is updated every
    step (``step``) or, like the authors' CosineAnnealingLR(T_max=epochs), once after every epoch.
    """
    last = cfg.epochs if stop_epoch is None else stop_epoch
    if not 1 <= last <= cfg.epochs:
        raise ValueError(f"stop_epoch {stop_epoch} outside 1..{cfg.epochs}")
    bs = n if cfg.batch_size == 0 else min(cfg.batch_size, n)
    steps_per_epoch = math.ceil(n / bs)
    total = cfg.epochs * steps_per_epoch
    gen = generator if generator is not None else torch.Generator().manual_seed(seed)
    bias_wd = weight_decay if cfg.decay_bias else 0.0
    if cfg.optimizer == "lbfgs":
        # one L-BFGS iteration (strong-Wolfe line search) per "epoch"; its history persists across
        # calls. L2 penalty 0.5 * wd * ||W||^2 = the coupled weight decay of Adam/SGD.
        # max_eval must be set: torch's default max_iter * 5 // 4 = 1 leaves the line search ONE
        # function evaluation per call; it then fails from about the 6th iteration on and the probe
        # froze far from the optimum (measured on random-encoder features: cross-entropy stuck at 1.78
        # while the regularised optimum is 1.06, test accuracy 18% where converged logistic
        # regression and ridge reach 25-28%). 25 = the line search's own limit.
        opt = torch.optim.LBFGS(model.parameters(), lr=lr, max_iter=1, max_eval=LBFGS_MAX_EVAL,
                                line_search_fn="strong_wolfe")

        def closure() -> torch.Tensor:
            opt.zero_grad(set_to_none=True)
            value = batch_loss(slice(None)) + 0.5 * weight_decay * model.weight.pow(2).sum()
            if bias_wd:
                value = value + 0.5 * bias_wd * model.bias.pow(2).sum()
            value.backward()
            return value
    else:
        groups = [{"params": [model.weight], "weight_decay": weight_decay},
                  {"params": [model.bias], "weight_decay": bias_wd}]
        opt = (torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam)(groups, lr=lr)
    per_epoch = cfg.optimizer != "lbfgs" and cfg.lr_schedule == "cosine" and cfg.lr_step == "epoch"
    # the authors' schedule: torch's CosineAnnealingLR(T_max = epochs), stepped after each epoch
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs) if per_epoch else None
    results = []
    step = 0
    for epoch in range(1, last + 1):
        if cfg.optimizer == "lbfgs":
            opt.step(closure)
        else:
            order = None
            if bs < n and cfg.shuffle:
                order = torch.randperm(n, generator=gen).to(model.weight.device)  # (n,)
            for i in range(steps_per_epoch):
                if cfg.lr_schedule == "cosine" and not per_epoch:
                    cur = 0.5 * lr * (1.0 + math.cos(math.pi * step / total))
                    for g in opt.param_groups:
                        g["lr"] = cur
                if bs >= n:
                    idx = slice(None)
                elif order is not None:
                    idx = order[i * bs:(i + 1) * bs]
                else:
                    idx = slice(i * bs, (i + 1) * bs)
                opt.zero_grad(set_to_none=True)
                batch_loss(idx).backward()
                opt.step()
                step += 1
            if scheduler is not None:
                scheduler.step()
        if epoch == last or (stop_epoch is None and epoch % cfg.eval_every == 0):
            results.append(evaluate(epoch))
    return results


def init_linear(model: torch.nn.Linear, init: str, generator: torch.Generator) -> None:
    """Start values of the probe's Linear layer (``tasks.<task>.train.init``), drawn from ``generator``
    (a CPU generator; the layer is moved to its device afterwards).

    ``zeros``: weight and bias 0 (the seed then only orders the batches). ``normal``: weight
    N(0, 0.01), bias 0 (the authors' FER classifier, docs/method.md §1.6 / 4.1; main.py ``linear_eval``).
    ``torch_default``: nn.Linear's own reset (kaiming-uniform with a = sqrt(5) for the weight, bias
    U(-1/sqrt(fan_in), 1/sqrt(fan_in))), which the authors' pose and AU heads keep (docs/method.md §1.6).
    """
    with torch.no_grad():
        if init == "zeros":
            torch.nn.init.zeros_(model.weight)
            torch.nn.init.zeros_(model.bias)
        elif init == "normal":
            torch.nn.init.normal_(model.weight, 0.0, 0.01, generator=generator)
            torch.nn.init.zeros_(model.bias)
        elif init == "torch_default":
            torch.nn.init.kaiming_uniform_(model.weight, a=math.sqrt(5), generator=generator)
            bound = 1.0 / math.sqrt(model.in_features) if model.in_features > 0 else 0.0
            torch.nn.init.uniform_(model.bias, -bound, bound, generator=generator)
        else:
            raise ValueError(f"init {init!r} is not one of {list(INITS)}")


def train_linear(x: torch.Tensor, y: torch.Tensor, loss: Loss, out_dim: int, *, lr: float,
                 weight_decay: float, cfg: TrainConfig, seed: int,
                 eval_sets: dict[str, torch.Tensor] | None = None, stop_epoch: int | None = None,
                 target_scale: tuple[torch.Tensor, torch.Tensor] | None = None) -> list[Checkpoint]:
    """Train one Linear(D, out_dim), started as ``cfg.init`` says, on (x (N, D), already standardised,
    y) and return its outputs on ``eval_sets`` at every ``cfg.eval_every``-th epoch and the last one
    (:func:`optimise_linear`). ``target_scale`` = (mean, std) maps the outputs back to target units
    (L1 with standardised targets). One CPU generator seeded ``seed`` draws the start values first,
    then the epochs' sample orders.
    """
    eval_sets = eval_sets or {}
    gen = torch.Generator().manual_seed(seed)
    model = torch.nn.Linear(x.shape[1], out_dim)
    init_linear(model, cfg.init, gen)
    model = model.to(x.device)
    n = len(x)
    eval_batch = max(n if cfg.batch_size == 0 else min(cfg.batch_size, n), 4096)

    def evaluate(epoch: int) -> Checkpoint:
        outs = {}
        for name, xe in eval_sets.items():
            o = _predict(model, xe, eval_batch)
            if target_scale is not None:
                o = o * target_scale[1] + target_scale[0]
            outs[name] = o.float().cpu().numpy()
        return Checkpoint(epoch, outs)

    return optimise_linear(model, lambda idx: _loss(loss, model(x[idx]), y[idx]), n, lr=lr,
                           weight_decay=weight_decay, cfg=cfg, seed=seed, stop_epoch=stop_epoch, evaluate=evaluate,
                           generator=gen)


@dataclass
class Record:
    """One candidate of the selection grid: (lr, weight decay, epoch) and its selection score (on
    validation for the clean protocol, on test for the paper protocol)."""

    lr: float
    weight_decay: float
    epoch: int
    val_score: float
    outputs: dict[str, np.ndarray] = field(repr=False)


def select_checkpoint(records: Sequence[Record], higher_is_better: bool) -> Record:
    """The record with the best score; ties go to the earliest record (grid order, then epoch). A
    nan score never wins."""
    best = None
    for r in records:
        if math.isnan(r.val_score):
            continue
        if best is None or (r.val_score > best.val_score if higher_is_better else r.val_score < best.val_score):
            best = r
    if best is None:
        raise RuntimeError("every candidate of the selection grid has an undefined score")
    return best


@dataclass
class ProbeOutcome:
    """What a task needs from :func:`fit_probe`."""

    test_outputs: np.ndarray  # (N_test, K), target units (logits for ce/bce)
    val_outputs: np.ndarray  # (N_val, K) of the SELECTED train-only model (paper: its outputs on the fit set)
    val_index: np.ndarray  # rows of the training data behind val_outputs
    selected: dict[str, Any]
    grid: list[dict[str, Any]]
    n_train: int
    n_val: int
    n_fit: int
    elapsed_s: float


def _to_tensor(a: np.ndarray, device: torch.device, loss: Loss | None = None) -> torch.Tensor:
    t = torch.as_tensor(np.ascontiguousarray(a))
    if loss == "ce":
        return t.long().to(device)
    return t.float().to(device)


def fit_probe(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, *, loss: Loss,
              out_dim: int, probe: ProbeConfig, train: TrainConfig, score: ScoreFn,
              higher_is_better: bool, seed: int, subjects: Any = None,
              standardize_targets: bool = False, y_test: np.ndarray | None = None) -> ProbeOutcome:
    """Train linear probes over the (lr, weight decay) grid and return the selected one's test outputs.

    ``probe.protocol``:

    * ``clean``: carve validation from the training data (:func:`carve_validation`), select
      (lr, weight decay, epoch) by ``score`` on it, then refit or keep the train-only model
      (``probe.refit``). The test set is predicted once, by the final model (``train_only`` keeps
      the test outputs of every checkpoint, but they are never scored here).
    * ``paper``: the authors' procedure (docs/method.md §4.1, 4.2, A.1): train on ALL training data,
      score the TEST set with ``score`` at every evaluation epoch and report the best test checkpoint.
      Needs ``y_test``. ``val_outputs`` are then the selected model's outputs on the fit set (for
      rules such as AU thresholds that need held-in predictions) and ``grid`` holds the whole test
      curve.

    ``x_*``: (N, D) float features; ``y_train``: (N,) int labels (ce), (N, L) 0/1 (bce) or (N, C)
    targets (l1). ``score(outputs, y)`` is the task's selection metric.
    """
    t0 = time.perf_counter()
    if len(x_train) != len(y_train):
        raise ValueError(f"{len(x_train)} training features for {len(y_train)} labels")
    if x_train.shape[1] != x_test.shape[1]:
        raise ValueError(f"train features have {x_train.shape[1]} dims, test features {x_test.shape[1]}")
    if standardize_targets and loss != "l1":
        raise ValueError("standardize_targets applies to the L1 regression loss only")
    paper = probe.protocol == "paper"
    if paper and (y_test is None or len(y_test) != len(x_test)):
        raise ValueError("the paper protocol selects on the test set: pass y_test (one label per test row)")
    device = resolve_device(probe.device, "probe.device")
    rng = np.random.default_rng(seed)
    if paper:
        tr_idx, va_idx = np.arange(len(x_train)), np.arange(len(x_train))
    else:
        tr_idx, va_idx = carve_validation(len(x_train), probe.val_fraction, rng, subjects)

    xt = _to_tensor(x_train, device)  # (N, D)
    yt = _to_tensor(y_train, device, loss)
    xte = _to_tensor(x_test, device)
    tr, va = torch.as_tensor(tr_idx, device=device), torch.as_tensor(va_idx, device=device)

    def targets(idx: torch.Tensor | slice) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None]:
        y = yt[idx]
        if not standardize_targets:
            return y, None
        m, s = y.mean(dim=0), y.std(dim=0, unbiased=False)
        s = torch.where(s > 1e-8, s, torch.ones_like(s))
        return (y - m) / s, (m, s)

    keep_test = paper or probe.refit == "train_only"
    # tasks.<task>.train.standardize overrides probe.standardize (the authors' FER probe reads raw
    # features, their pose and AU heads start with BatchNorm1d)
    standardize = probe.standardize if train.standardize is None else train.standardize
    y_fit, scale = targets(tr)
    std = standardizer(xt[tr], standardize)
    x_fit = std(xt[tr])  # (N_train, D)
    evals = {"val": x_fit if paper else std(xt[va])}
    if keep_test:
        evals["test"] = std(xte)
    y_sel = y_test if paper else y_train[va_idx]
    records: list[Record] = []
    for lr, wd in itertools.product(train.lr_grid, train.weight_decay_grid):
        cps = train_linear(x_fit, y_fit, loss, out_dim, lr=lr, weight_decay=wd, cfg=train,
                           seed=seed, eval_sets=evals, target_scale=scale)
        for cp in cps:
            s = float(score(cp.outputs["test" if paper else "val"], y_sel))
            records.append(Record(lr, wd, cp.epoch, s, cp.outputs))
        log.info("probe lr=%g wd=%g: %s score %s", lr, wd, "TEST" if paper else "val",
                 ", ".join(f"e{cp.epoch}={records[-len(cps) + i].val_score:.4g}" for i, cp in enumerate(cps)))
    best = select_checkpoint(records, higher_is_better)
    del x_fit, evals

    if probe.refit == "train_val" and not paper:
        y_all, scale_all = targets(slice(None))
        std = standardizer(xt, standardize)
        cp = train_linear(std(xt), y_all, loss, out_dim, lr=best.lr, weight_decay=best.weight_decay, cfg=train,
                          seed=seed, eval_sets={"test": std(xte)},
                          stop_epoch=best.epoch, target_scale=scale_all)[-1]
        test_out, n_fit = cp.outputs["test"], len(x_train)
    else:
        test_out, n_fit = best.outputs["test"], len(tr_idx)

    key = "test_score" if paper else "val_score"
    return ProbeOutcome(
        test_outputs=test_out,
        val_outputs=best.outputs["val"],
        val_index=va_idx,
        selected={"lr": best.lr, "weight_decay": best.weight_decay, "epoch": best.epoch, key: best.val_score,
                  "selected_on": "test" if paper else "validation"},
        grid=[{"lr": r.lr, "weight_decay": r.weight_decay, "epoch": r.epoch, key: r.val_score} for r in records],
        n_train=len(tr_idx), n_val=0 if paper else len(va_idx), n_fit=n_fit,
        elapsed_s=time.perf_counter() - t0,
    )


# --------------------------------------------------------------------------------------------------
# cached features (architecture.md stage 4) joined with the aligned manifest (stage 2)


def load_split(features_dir: Path, aligned_dir: Path, split: str, readout: str) -> tuple[np.ndarray, pd.DataFrame]:
    """Features of one split and the manifest rows they belong to, in the same order.

    ``readout``: ``trunk`` (the shared trunk, the authors' choice, docs/method.md §6.1 item 2), ``face``
    (F_f), ``pose`` (F_p) or ``concat`` = [F_f, F_p] (the two disentangled heads side by side).
    Returns (X (N, D) float32, manifest with one row per feature row).
    """
    npz_path = Path(features_dir) / f"{split}.npz"
    shard_dir = Path(aligned_dir) / split
    if not npz_path.is_file():
        raise FileNotFoundError(f"cached features not found: {npz_path} (run the extract stage)")
    manifest = read_manifest(shard_dir)  # its column row, unique
    with np.load(npz_path) as z:
        need = CONCAT if readout == "concat" else (readout,)
        missing = [k for k in (*need, "row") if k not in z.files]
        if missing:
            raise KeyError(f"{npz_path}: missing key(s) {missing}; has {z.files}")
        parts = [np.asarray(z[k], dtype=np.float32) for k in need]
        rows = np.asarray(z["row"]).astype(np.int64)
    for k, a in zip(need, parts):
        if a.ndim != 2 or len(a) != len(rows):
            raise ValueError(f"{npz_path}: {k} has shape {a.shape}, expected ({len(rows)}, D)")
        if not np.all(np.isfinite(a)):
            raise ValueError(f"{npz_path}: {k} contains nan or inf")
    x = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1)  # (N, D)
    return x, rows_of(manifest, rows, npz_path, shard_dir)


def load_rows(features_dir: Path, aligned_dir: Path, split: str) -> pd.DataFrame:
    """The manifest rows :func:`load_split` returns beside X, read without loading a feature array (only
    the cache's ``row`` key): the label-only floors use it."""
    npz_path = Path(features_dir) / f"{split}.npz"
    shard_dir = Path(aligned_dir) / split
    if not npz_path.is_file():
        raise FileNotFoundError(f"cached features not found: {npz_path} (run the extract stage)")
    manifest = read_manifest(shard_dir)
    with np.load(npz_path) as z:
        if "row" not in z.files:
            raise KeyError(f"{npz_path}: missing key(s) ['row']; has {z.files}")
        rows = np.asarray(z["row"]).astype(np.int64)  # (N,)
    return rows_of(manifest, rows, npz_path, shard_dir)


def rows_of(manifest: pd.DataFrame, rows: np.ndarray, npz_path: Path, shard_dir: Path) -> pd.DataFrame:
    """The manifest rows named by a feature cache's ``row`` key, in its order; the rows must be unique and
    all in the manifest."""
    if len(np.unique(rows)) != len(rows):
        raise ValueError(f"{npz_path}: key row has duplicates")
    known = set(manifest["row"].tolist())
    unknown = [int(r) for r in rows if int(r) not in known]
    if unknown:
        raise ValueError(f"{npz_path}: {len(unknown)} feature rows are not in {shard_dir / MANIFEST}, "
                         f"e.g. {unknown[:5]}")
    return manifest.set_index("row", drop=False).loc[rows].reset_index(drop=True)


def require_columns(manifest: pd.DataFrame, columns: Sequence[str], where: str) -> None:
    missing = [c for c in columns if c not in manifest.columns]
    if missing:
        raise KeyError(f"{where}: missing column(s) {missing}; has {list(manifest.columns)}")


def percent(x: float) -> float | None:
    """Fraction -> percentage for result files (papers report %); undefined -> None (JSON null)."""
    return None if x is None or math.isnan(x) else 100.0 * float(x)
