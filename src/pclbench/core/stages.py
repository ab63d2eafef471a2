"""Which config keys each workflow stage reads: the one declaration that the Snakemake params
(``workflow/rules/common.smk``), the DVC params (:mod:`pclbench.core.dvc_export`) and the CLI's check
of the config it received (:mod:`pclbench.cli`) all read.

A key is a whole section (``"align"``) or one entry of a keyed section (``"datasets.lfw"``,
``"benchmarks.raf_db"``, ``"tasks.expression"``). Snakemake records a job's params and re-runs the
job when they change, DVC lists them per stage: so a job re-runs exactly when a key it reads changes.

Where the code that reads a section is chosen by name, the declaration lives with that code:

* pretraining: ``pretrain`` (the trainer's own) + the method's ``Method.config_sections``
  (:mod:`pclbench.pretrain.methods`); ``random`` declares ``model`` only, so a change to PCL's
  settings never re-runs it. A workflow method that is a variant (config ``variants``) reads its
  registered method's keys with the variant's overrides merged in, plus its own ``variants`` entry;
* prepare: the dataset's entry + the parser's sections (:data:`pclbench.data.parsers.PARSER_SECTIONS`);
* probe: ``probe``, ``seed``, the benchmark's entry and its task's entry ``tasks.<task>`` (each
  :mod:`pclbench.evaluate` task module reads ``config["tasks"][<its name>]`` and no other section).

The other stages read fixed sections (:data:`SECTIONS`). A stage is named after its workflow rule
(``figure_bars`` ... for ``pclbench figures <kind>``); :data:`RULE_STAGE` names the rules that run
another rule's stage (the scatter/gather align jobs). ``download`` (how to transfer: retries,
timeouts) is read by ``acquire`` but is not one of its params (:data:`READ_OUTSIDE_PARAMS`): the
workflow passes it apart, so that changing it re-runs no parser.
"""
from __future__ import annotations

import copy
import typing
from typing import Any, Mapping

from pclbench.core.config import ConfigError, deep_merge

# Stages whose keys do not depend on a name. A stage that takes a dataset adds its entry.
SECTIONS: dict[str, tuple[str, ...]] = {
    "generate": ("synth",),  # SynthFaces datasets: every one is rendered from the `synth` section
    "acquire": (),  # + datasets.<dataset>
    "prepare": (),  # + datasets.<dataset> + the parser's sections
    "contact_sheet": (),
    "align": ("align",),  # + datasets.<dataset> (its crop size)
    "pretrain": ("pretrain",),  # + the method's Method.config_sections
    "extract": ("evaluate",),
    "probe": ("probe", "seed"),  # + benchmarks.<benchmark> + tasks.<its task>
    "tables": ("tables", "workflow", "benchmarks"),
    "figure_bars": ("figures", "tables", "workflow", "benchmarks"),
    "figure_curves": ("figures",),
    "figure_swap_grid": ("figures",),
    "figure_embedding": ("figures", "benchmarks"),  # benchmarks: the expression class names of the legend
    "import_official": ("model",),  # projection sizes (not a workflow rule: `pclbench import-official`)
}
# Sections a stage reads when the config holds them and does without otherwise (the method order of
# `workflow.methods`, the benchmarks' tasks): part of its params, not required by its command.
OPTIONAL: dict[str, tuple[str, ...]] = {
    "tables": ("workflow", "benchmarks"),
    "figure_bars": ("workflow", "benchmarks"),
    "figure_embedding": ("benchmarks",),
}
# Stages that read the entry of the dataset they are run for.
DATASET_ENTRY = ("acquire", "prepare", "align")
# Sections a stage reads that the workflow passes apart from its params (they change no result).
READ_OUTSIDE_PARAMS: dict[str, tuple[str, ...]] = {"acquire": ("download",)}
# Workflow rules that run another rule's stage.
RULE_STAGE = {"align_part": "align", "align_merge": "align"}


def method_sections(method: str) -> tuple[str, ...]:
    """``Method.config_sections`` of a registered pretraining method (imports torch)."""
    from pclbench.pretrain.methods import METHODS, Method

    builder = METHODS.get(method)
    cls = typing.get_type_hints(builder).get("return")  # each builder is annotated with its Method class
    if not (isinstance(cls, type) and issubclass(cls, Method)):
        raise TypeError(f"the builder of method {method!r} is not annotated with the Method class it returns")
    return tuple(cls.config_sections)


def _variant(config: Mapping[str, Any], method: str) -> tuple[str, Mapping | None]:
    """(registered method, variant entry or None) of a workflow method name."""
    variants = config.get("variants") or {}
    if method in variants:
        return variants[method]["method"], variants[method]
    return method, None


def fixed_keys(stage: str, dataset: str | None = None) -> tuple[str, ...]:
    """The keys of a stage that need no lookup: :data:`SECTIONS`, and the entry of ``dataset`` for
    the stages that read it (:data:`DATASET_ENTRY`)."""
    stage = RULE_STAGE.get(stage, stage)
    if stage not in SECTIONS:
        raise KeyError(f"unknown stage {stage!r}; known: {', '.join(sorted(SECTIONS))}")
    keys = SECTIONS[stage]
    return keys + ((f"datasets.{dataset}",) if stage in DATASET_ENTRY and dataset is not None else ())


def prepare_keys(config: Mapping[str, Any], dataset: str) -> tuple[str, ...]:
    """prepare: the dataset's entry + the sections its parser reads (``PARSER_SECTIONS``)."""
    from pclbench.data.parsers import PARSER_SECTIONS

    return fixed_keys("prepare", dataset) + PARSER_SECTIONS.get(config["datasets"][dataset].get("parser"), ())


def pretrain_keys(config: Mapping[str, Any], method: str) -> tuple[str, ...]:
    """pretrain: ``pretrain`` + the registered method's ``config_sections``; a variant (``method``
    names an entry of ``variants``) adds its own entry."""
    base, variant = _variant(config, method)
    return fixed_keys("pretrain") + method_sections(base) + ((f"variants.{method}",) if variant is not None else ())


def probe_keys(config: Mapping[str, Any], benchmark: str) -> tuple[str, ...]:
    """probe: ``probe``, ``seed``, the benchmark's entry and its task's entry."""
    return fixed_keys("probe") + (f"benchmarks.{benchmark}", f"tasks.{config['benchmarks'][benchmark]['task']}")


def stage_keys(config: Mapping[str, Any], stage: str, *, dataset: str | None = None, method: str | None = None,
               benchmark: str | None = None, **_other: Any) -> tuple[str, ...]:
    """The config keys ``stage`` (a rule name, see :data:`RULE_STAGE`) reads as its params.

    ``dataset``, ``method``, ``benchmark``: the names the stage runs for (a rule's wildcards; other
    wildcards, e.g. ``split``, are accepted and ignored). ``config`` resolves what a name points to:
    a dataset's parser, a benchmark's task, a variant's method. (The CLI calls the stage's own
    function below, so that a stage's code deps (pclbench.core.dvc_export) stay its own.)
    """
    stage = RULE_STAGE.get(stage, stage)
    needs = {"prepare": dataset, "pretrain": method, "probe": benchmark}
    if stage in needs and needs[stage] is None:
        raise ValueError(f"stage {stage}: the {dict(prepare='dataset', pretrain='method', probe='benchmark')[stage]} "
                         f"must be named")
    if stage == "prepare":
        keys = prepare_keys(config, dataset)
    elif stage == "pretrain":
        keys = pretrain_keys(config, method)
    elif stage == "probe":
        keys = probe_keys(config, benchmark)
    else:
        keys = fixed_keys(stage, dataset)
    return tuple(dict.fromkeys(keys))


def _get(config: Mapping[str, Any], key: str) -> Any:
    section, _, entry = key.partition(".")
    return config[section][entry] if entry else config[section]


def stage_config(config: Mapping[str, Any], stage: str, **names: Any) -> dict:
    """The part of ``config`` that ``stage`` reads (:func:`stage_keys`), as a config dict.

    For a variant (``method`` names an entry of ``variants``) its overrides are deep-merged onto the
    sections it overrides, and its own entry is included (so DVC lists ``variants`` among the params).
    """
    overrides: Mapping[str, Any] = {}
    if names.get("method") is not None and RULE_STAGE.get(stage, stage) == "pretrain":
        _, variant = _variant(config, names["method"])
        overrides = variant["overrides"] if variant is not None else {}
    out: dict[str, Any] = {}
    for key in stage_keys(config, stage, **names):
        section, _, entry = key.partition(".")
        value = copy.deepcopy(_get(config, key))
        if entry:
            out.setdefault(section, {})[entry] = value
        else:
            out[section] = deep_merge(value, overrides[section]) if section in overrides else value
    return out


def missing_keys(config: Mapping[str, Any], keys) -> list[str]:
    """The keys (``section`` or ``section.entry``) that ``config`` lacks."""
    out = []
    for key in keys:
        section, _, entry = key.partition(".")
        if section not in config or (entry and not (isinstance(config[section], Mapping)
                                                    and entry in config[section])):
            out.append(key)
    return out


def check_received(config: Mapping[str, Any], stage: str, command: str, keys: tuple[str, ...]) -> None:
    """Raise :class:`ConfigError` when the config a command received lacks one of ``keys`` (the
    stage's, from the functions above) or a section the stage reads outside its params; not the
    :data:`OPTIONAL` ones. The message names every missing key."""
    stage = RULE_STAGE.get(stage, stage)
    keys = tuple(keys) + READ_OUTSIDE_PARAMS.get(stage, ())
    missing = missing_keys(config, [k for k in keys if k not in OPTIONAL.get(stage, ())])
    if missing:
        raise ConfigError(f"{command} reads the config key(s) {', '.join(missing)} (pclbench.core.stages), "
                          f"which the config it received lacks; pass them in --params or a --config file")
