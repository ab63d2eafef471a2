"""Dynamic Weight Averaging over PCL's two contrastive losses (docs/method.md §2.8; Liu et al., CVPR 2019).

With ``L_k(t)`` the epoch mean of the UNWEIGHTED loss of task k and K the number of tasks, for
epoch ``t > start_epoch``:

    r_k = L_k(t-1) / L_k(t-2),    w_k = K exp(r_k / T) / sum_j exp(r_j / T)

and ``w_k = 1`` before. PCL: tasks (face, pose), T = 2, start_epoch = 2 (warm_up = -1), epochs
counted from 1, so epoch 3 is the first weighted one and uses epochs 2 and 1.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence


class DynamicWeightAverage:
    """Keeps the per-epoch loss means and turns them into per-task weights.

    Call ``weights(t)`` at the start of epoch t and ``update(t, means)`` at its end. The state
    (``state_dict``) holds the whole history, so a resumed run gets exactly the same weights.
    """

    def __init__(self, tasks: Sequence[str] = ("face", "pose"), temperature: float | None = None,
                 start_epoch: int | None = None):
        tasks = tuple(tasks)
        if not tasks or len(set(tasks)) != len(tasks) or not all(isinstance(t, str) for t in tasks):
            raise ValueError(f"DynamicWeightAverage: tasks must be distinct names, got {tasks!r}")
        if temperature is None or isinstance(temperature, bool) or not temperature > 0:
            raise ValueError(f"DynamicWeightAverage: temperature must be > 0, got {temperature!r}")
        if start_epoch is None or isinstance(start_epoch, bool) or not isinstance(start_epoch, int):
            raise ValueError(f"DynamicWeightAverage: start_epoch must be an integer, got {start_epoch!r}")
        self.tasks = tasks
        self.K = len(tasks)
        self.temperature = float(temperature)
        self.start_epoch = start_epoch
        self.history: dict[int, dict[str, float]] = {}

    def update(self, epoch: int, epoch_means: Mapping[str, float]) -> None:
        """Record epoch ``epoch``'s mean unweighted losses (one finite positive value per task)."""
        if set(epoch_means) != set(self.tasks):
            raise ValueError(f"DynamicWeightAverage.update(epoch {epoch}): expected losses for "
                             f"{list(self.tasks)}, got {sorted(epoch_means)}")
        means = {}
        for t in self.tasks:
            v = float(epoch_means[t])
            if not math.isfinite(v) or v <= 0:
                raise ValueError(f"DynamicWeightAverage.update(epoch {epoch}): loss {t!r} = {v!r} must be "
                                 "finite and > 0 (it is used as a ratio denominator)")
            means[t] = v
        self.history[int(epoch)] = means

    def weights(self, epoch: int) -> dict[str, float]:
        """The task weights for ``epoch``; they sum to K."""
        if epoch <= self.start_epoch:
            return {t: 1.0 for t in self.tasks}
        missing = [e for e in (epoch - 1, epoch - 2) if e not in self.history]
        if missing:
            raise ValueError(f"DynamicWeightAverage.weights(epoch {epoch}): no recorded losses for epoch(s) "
                             f"{missing}; call update() at the end of every epoch")
        r = {t: self.history[epoch - 1][t] / self.history[epoch - 2][t] for t in self.tasks}
        m = max(r.values())  # subtracted for a stable softmax; cancels out
        e = {t: math.exp((r[t] - m) / self.temperature) for t in self.tasks}
        z = sum(e.values())
        return {t: self.K * e[t] / z for t in self.tasks}

    def state_dict(self) -> dict[str, Any]:
        return {"tasks": list(self.tasks), "temperature": self.temperature, "start_epoch": self.start_epoch,
                "history": [[e, dict(v)] for e, v in sorted(self.history.items())]}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        got = (tuple(state["tasks"]), float(state["temperature"]), int(state["start_epoch"]))
        want = (self.tasks, self.temperature, self.start_epoch)
        if got != want:
            raise ValueError(f"DynamicWeightAverage.load_state_dict: state has (tasks, temperature, "
                             f"start_epoch) = {got}, this object {want}")
        self.history = {int(e): {t: float(v[t]) for t in self.tasks} for e, v in state["history"]}
