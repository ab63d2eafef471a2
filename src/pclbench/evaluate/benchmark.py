"""One probe job = one (method, benchmark): every readout x every seed, one result file.

A *benchmark* (config ``benchmarks.<name>``, COMMON contract) names a task and the (dataset, split)
it trains and tests on -- head pose trains on 300W-LP and tests on AFLW2000 (docs/method.md §4.2), so the
two may be different datasets -- plus its labels (expression class names in label order, whose count
is the number of classes; AU manifest columns). ``tasks.<task>`` holds only the protocol (grids,
thresholds, modes). :func:`run_benchmark` runs the task's probe for each readout of ``probe.readouts``
and each seed ``master seed + k`` (k < ``probe.n_seeds``) and aggregates the runs into
``summary[readout][metric] = {mean, std, n}`` with the sample standard deviation (ddof=1; 0 when
n = 1). Training-free verification (cosine) does not depend on the seed: it runs once per readout
and its std is over the folds (``std_over: folds``), as LFW results are reported.

Features come from the stage-4 cache ``<features_root>/<dataset>/<split>.npz`` (trunk, face, pose;
concat = [face, pose]) joined with ``<aligned_root>/<dataset>/<split>/manifest.csv``; verification
reads ``<raw_root>/<dataset>/<pairs_file>``.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import pandas as pd
import torch

from pclbench.core.config import ConfigError, from_dict
from pclbench.evaluate.linear import ProbeConfig, load_rows, load_split

log = logging.getLogger(__name__)


@dataclass
class DataRef:
    """``{dataset, split}`` of a benchmark entry."""

    dataset: str
    split: str

    def __str__(self) -> str:
        return f"{self.dataset}/{self.split}"


@dataclass
class Benchmark:
    """Entry ``benchmarks.<name>`` (schema: workflow/schemas/config.schema.yaml)."""

    task: str
    train: Optional[DataRef]  # null for verification (pairs + folds) and au (folds of `test`)
    test: DataRef
    labels: Optional[list[str]]
    description: str


@dataclass
class Roots:
    """Where a method's cached features, the aligned manifests and the raw datasets live."""

    features: Path  # results/features/<method>
    aligned: Path  # data/aligned
    raw: Path  # data/raw

    def load(self, ref: DataRef, readout: str) -> tuple[np.ndarray, pd.DataFrame]:
        """(X (N, D) float32, manifest rows in the same order) of ``ref`` for ``readout``."""
        return load_split(self.features / ref.dataset, self.aligned / ref.dataset, ref.split, readout)

    def rows(self, ref: DataRef) -> pd.DataFrame:
        """The manifest rows of ``ref`` that :meth:`load` returns beside X, in the same order, without
        loading a feature array (:func:`pclbench.evaluate.linear.load_rows`): the label-only floors use it."""
        return load_rows(self.features / ref.dataset, self.aligned / ref.dataset, ref.split)

    def manifest_path(self, ref: DataRef) -> str:
        return str(self.aligned / ref.dataset / ref.split / "manifest.csv")


def sample_stats(values: list[float | None]) -> dict[str, Any]:
    """{mean, std, n} over the defined values: std = sample std (ddof=1), 0 when n = 1; an undefined
    (None / nan) value is left out of n; no defined value -> mean and std None."""
    v = [float(x) for x in values if x is not None and math.isfinite(float(x))]
    if not v:
        return {"mean": None, "std": None, "n": 0}
    a = np.asarray(v, dtype=np.float64)
    return {"mean": float(a.mean()), "std": float(a.std(ddof=1)) if len(a) > 1 else 0.0, "n": len(a)}


def summarize(runs: list[dict], readouts: list[str]) -> dict[str, dict[str, dict[str, Any]]]:
    """``summary[readout][metric] = sample_stats`` over the runs of that readout (their seeds)."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for ro in readouts:
        mine = [r for r in runs if r["readout"] == ro]
        keys = list(dict.fromkeys(k for r in mine for k in r["metrics"]))
        out[ro] = {k: sample_stats([r["metrics"].get(k) for r in mine]) for k in keys}
    return out


def parse_benchmark(name: str, entry: dict) -> Benchmark:
    bench = from_dict(Benchmark, entry, f"benchmarks.{name}")
    from pclbench.evaluate.tasks import TASKS

    if bench.task not in TASKS.names():
        raise ConfigError(f"benchmarks.{name}.task: {bench.task!r} is not a task ({', '.join(TASKS.names())})")
    if bench.task in ("expression", "pose") and bench.train is None:
        raise ConfigError(f"benchmarks.{name}.train: task {bench.task} trains a probe: give {{dataset, split}}")
    if bench.task in ("verification", "au") and bench.train is not None:
        raise ConfigError(f"benchmarks.{name}.train: task {bench.task} trains on the folds of `test` "
                          f"(pairs.csv folds / the manifest's fold column): set train to null")
    if bench.task == "expression" and (not bench.labels or len(bench.labels) < 2):
        raise ConfigError(f"benchmarks.{name}.labels: expression needs the class names in label order "
                          f"(at least 2), got {bench.labels}")
    return bench


def run_benchmark(name: str, entry: dict, features_root: Path, aligned_root: Path, raw_root: Path,
                  config: dict, method: str, seeds: list[int] | None = None,
                  readouts: list[str] | None = None,
                  progress: Callable[[str], None] | None = None) -> dict:
    """Run benchmark ``name`` (its config ``entry``) for ``method`` -> the probe-result dict.

    ``config`` holds sections ``probe``, ``tasks`` and ``seed`` (the master seed); ``seeds`` /
    ``readouts`` default to ``seed + k`` (k < probe.n_seeds) and ``probe.readouts``. Returns the
    COMMON probe-result contract: benchmark, task, method, datasets, protocol, readouts, seeds, runs
    (one per readout x seed, with per-class / per-AU / per-angle detail and the selected
    hyperparameters), summary, std_over, primary_metric, higher_is_better, method_info (None here: the
    encoder's record, ``pclbench.cli.checkpoint_info``, is filled in by ``pclbench probe --checkpoint``),
    trivial (the task's label-only floor, ``task.floor``: ``{predictor, metrics: {metric: value}}``).
    """
    from pclbench.evaluate.tasks import TASKS

    t0 = time.perf_counter()
    bench = parse_benchmark(name, entry)
    for key in ("probe", "tasks"):
        if key not in config:
            raise ConfigError(f"the probe needs config section {key!r} (got {sorted(config)})")
    if bench.task not in config["tasks"]:
        raise ConfigError(f"config section tasks has no entry {bench.task!r} (benchmark {name})")
    # explicit readouts replace probe.readouts before the section is built, so the schema checks them too
    probe_section = config["probe"] if readouts is None else {**config["probe"], "readouts": list(readouts)}
    probe = from_dict(ProbeConfig, probe_section, "probe")
    if seeds is None:
        if "seed" not in config:
            raise ConfigError("the probe needs the master `seed` (config key seed) or explicit seeds")
        seeds = [int(config["seed"]) + k for k in range(probe.n_seeds)]
    seeds = [int(s) for s in seeds]
    # tasks.<task>.train.standardize (null = keep probe.standardize) decides the features of this task;
    # applied here so the task's probe and its protocol description agree
    task_std = (config["tasks"][bench.task] or {}).get("train", {}).get("standardize")
    if task_std is not None:
        probe = dataclasses.replace(probe, standardize=bool(task_std))
    task = TASKS.get(bench.task)
    roots = Roots(Path(features_root), Path(aligned_root), Path(raw_root))
    # training-free protocols (cosine verification) give the same answer for every seed
    free = bool(getattr(task, "training_free", lambda c: False)(config))
    run_seeds = seeds[:1] if free else seeds

    threads = probe.num_threads
    before = torch.get_num_threads()
    if threads:
        # probe-sized tensors: extra threads mostly spin, and on a shared machine they contend
        torch.set_num_threads(threads)
    runs: list[dict] = []
    try:
        total = len(probe.readouts) * len(run_seeds)
        for ro in probe.readouts:
            for s in run_seeds:
                t1 = time.perf_counter()
                r = task.run(bench, roots, config, probe, s, ro)
                r = {"readout": ro, "seed": s, **r, "elapsed_s": time.perf_counter() - t1}
                runs.append(r)
                msg = (f"{name} {method} readout={ro} seed={s}: "
                       + ", ".join(f"{k}={v:.4g}" for k, v in r["metrics"].items() if isinstance(v, float))
                       + f" ({len(runs)}/{total}, {r['elapsed_s']:.1f} s)")
                (progress or log.info)(msg)
    finally:
        torch.set_num_threads(before)

    primary, higher = task.PRIMARY_METRIC, task.HIGHER_IS_BETTER  # the task's headline number (COMMON contract)
    if free:
        # one run per readout; the spread is the fold-to-fold one (LFW convention), n = folds
        summary = {r["readout"]: {k: dict(v) for k, v in r["fold_summary"].items()} for r in runs}
        std_over = "folds"
    else:
        summary = summarize(runs, probe.readouts)
        std_over = "seeds"
    # the task's floor from labels only (pclbench.evaluate.<task>.floor): same rows / folds / pairs and
    # metric code as the probe, deterministic, so computed once per job
    trivial = task.floor(bench, roots, config)
    datasets = {"test": str(bench.test)}
    if bench.train is not None:
        datasets = {"train": str(bench.train), **datasets}
    return {
        "benchmark": name, "task": bench.task, "method": method, "description": bench.description,
        "datasets": datasets, "labels": bench.labels,
        "protocol": probe.protocol, "protocol_description": _describe(bench.task, probe, config),
        "readouts": list(probe.readouts), "seeds": run_seeds,
        "runs": runs, "summary": summary, "std_over": std_over,
        "primary_metric": primary, "higher_is_better": higher,
        "method_info": None,  # the encoder's own record: pclbench.cli.checkpoint_info (pclbench probe --checkpoint)
        "trivial": trivial,  # {predictor, metrics: {metric: value}, ...}: the label-only floor of this benchmark
        "elapsed_s": time.perf_counter() - t0,
    }


def _describe(task_name: str, probe: ProbeConfig, config: dict) -> str:
    from pclbench.evaluate.tasks import TASKS

    task = TASKS.get(task_name)
    extra = getattr(task, "describe", None)
    return extra(probe, config) if extra is not None else probe.describe()
