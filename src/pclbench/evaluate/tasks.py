"""The ``tasks`` config section as one typed model: the probe protocol of each evaluation task.

``tasks`` holds one sub-section per task of :data:`pclbench.evaluate.TASKS` (docs/method.md §4); each
task module reads only its own (``from_dict(ExpressionConfig, config["tasks"]["expression"], ...)``).
This model gathers them so the section has a single root from which its JSON schema is generated
(:mod:`pclbench.core.schema_gen`). The data each benchmark reads is in the ``benchmarks`` section.
Each sub-section is optional in the schema (as before the schema was generated): a probe job receives
only its own task's entry (:mod:`pclbench.core.stages`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pclbench.core.config import setting
from pclbench.core.registry import Registry
from pclbench.evaluate import au, expression, pose, verification
from pclbench.evaluate.au import AUConfig
from pclbench.evaluate.expression import ExpressionConfig
from pclbench.evaluate.pose import PoseConfig
from pclbench.evaluate.verification import VerificationConfig


@dataclass
class TasksConfig:
    """Per-task probe protocol (pclbench.evaluate.TASKS); the data each benchmark reads is in `benchmarks`."""

    expression: ExpressionConfig = setting(
        "Facial expression recognition (pclbench.evaluate.expression).", optional=True)
    verification: VerificationConfig = setting(
        "Face verification on pairs (pclbench.evaluate.verification).", optional=True)
    au: AUConfig = setting(
        "Facial action unit detection (pclbench.evaluate.au).", optional=True)
    pose: PoseConfig = setting(
        "Head-pose regression (pclbench.evaluate.pose).", optional=True)


TASKS: Registry[Any] = Registry("task")
for _name, _module in (("expression", expression), ("verification", verification), ("au", au), ("pose", pose)):
    TASKS.register(_name)(_module)


def primary_metric(task: str) -> tuple[str, bool]:
    """(primary metric, higher is better) of ``task``: its module's own declaration, the headline number
    of the probe result (``primary_metric``) and of the tables' primary columns."""
    module = TASKS.get(task)
    return module.PRIMARY_METRIC, module.HIGHER_IS_BETTER
