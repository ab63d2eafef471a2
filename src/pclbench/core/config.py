"""Configuration: one YAML file (``config/config.yaml``) validated by one JSON schema.

Every module that needs settings declares a dataclass *without defaults* and builds it with
:func:`from_dict`, so a value can only come from the config file (one source of truth) and a
missing or misspelt key fails loudly, naming the full key path (``pretrain.optim.lr``).
"""
from __future__ import annotations

import copy
import dataclasses
import math
import typing
from pathlib import Path
from typing import Any, Mapping, Type, TypeVar

import yaml

from pclbench.core.resources import REPO_ROOT, resource_path  # noqa: F401  (REPO_ROOT: tests)
from pclbench.core.schema_gen import is_model, validator

C = TypeVar("C")

SCHEMA_PATH = resource_path("workflow/schemas/config.schema.yaml")
DEFAULT_CONFIG = resource_path("config/config.yaml")


class ConfigError(ValueError):
    """A config value is missing, unknown or invalid; the message names the key path."""


def setting(description: str, *, choices: Any = None, optional: bool = False, **schema: Any) -> Any:
    """One key of a config section's typed model: required (no default: the value comes from the config
    file only), with its one-line ``description`` and its JSON-schema keywords, spelt as in JSON schema
    (``minimum``, ``exclusiveMinimum``, ``maximum``, ``minItems``, ``pattern``, ``items`` ...).

    ``choices``: the allowed values where they come from a registry (``choices=ENCODERS``): iterated when
    the schema is generated, so a newly registered name is allowed without touching the schema. The field's
    type gives ``type`` / ``enum`` (``Literal``) / nesting; :mod:`pclbench.core.schema_gen` writes the
    module sections of ``workflow/schemas/config.schema.yaml`` from these.

    ``optional``: the key may be absent (the schema leaves it out of ``required``; the model then holds
    None). Only for sub-sections a job receives alone: a probe job's ``--params`` hold just its own task's
    ``tasks.<task>`` (:mod:`pclbench.core.stages`), so a change to another task does not re-run it.
    ``null`` stays refused: the annotation is not Optional.
    """
    return dataclasses.field(metadata={"description": description, "choices": choices, "optional": optional,
                                       "schema": schema})


def from_dict(cls: Type[C], data: Mapping[str, Any], where: str = "") -> C:
    """Build dataclass ``cls`` from ``data``, strictly: the one place a config dict becomes a typed model.

    A section model (fields declared with :func:`setting`) is first validated against the JSON schema
    generated from it (:func:`pclbench.core.schema_gen.model_schema`, the schema of its section in
    ``workflow/schemas/config.schema.yaml``; Draft 2020-12, as the Snakefile and :mod:`pclbench.core.schema`),
    and NaN / infinities are refused (:func:`check_config_values`): a model's ``__post_init__`` keeps only
    the checks a schema cannot say (between fields). Then, for every dataclass, nested dataclass fields are
    built recursively; unknown keys, missing keys and values of the wrong basic type raise
    :class:`ConfigError` naming ``where.key`` (``config error at pcl.temperature: ...``).
    """
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where or '<root>'}: expected a mapping, got {type(data).__name__}")
    if is_model(cls):
        _validate_model(cls, data, where)
    return _build(cls, data, where)


def _validate_model(cls: type, data: Mapping[str, Any], where: str) -> None:
    """Refuse ``data`` where it breaks the schema generated from model ``cls`` (first error, by key path)."""
    errors = sorted(validator(cls, where).iter_errors(dict(data)), key=lambda e: [str(p) for p in e.absolute_path])
    if errors:
        e = errors[0]
        at = where + "".join(f"[{p}]" if isinstance(p, int) else (f".{p}" if where or i else str(p))
                             for i, p in enumerate(e.absolute_path))
        prefix = f"{at}." if at else ""
        if e.validator == "additionalProperties" and isinstance(e.instance, Mapping):
            known = sorted(e.schema.get("properties", {}))
            unknown = sorted(set(e.instance) - set(known))
            raise ConfigError(f"unknown key(s) {', '.join(prefix + str(k) for k in unknown)}; "
                              f"valid keys under {at or '<root>'}: {', '.join(known)}")
        if e.validator == "required" and isinstance(e.instance, Mapping):
            missing = [k for k in e.validator_value if k not in e.instance]
            raise ConfigError(f"missing key {prefix}{missing[0]}")
        raise ConfigError(f"config error at {at or '<root>'}: {e.message}")
    check_config_values(dict(data), where)


def _build(cls: Type[C], data: Mapping[str, Any], where: str) -> C:
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where or '<root>'}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    prefix = f"{where}." if where else ""
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(
            f"unknown key(s) {', '.join(prefix + k for k in unknown)}; "
            f"valid keys under {where or '<root>'}: {', '.join(sorted(fields))}"
        )
    kwargs = {}
    for name, f in fields.items():
        key = prefix + name
        if name not in data:
            if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
                continue
            if f.metadata.get("optional"):  # setting(optional=True): absent -> None
                kwargs[name] = None
                continue
            raise ConfigError(f"missing key {key}")
        kwargs[name] = _coerce(hints[name], data[name], key)
    return cls(**kwargs)


def _coerce(tp: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key)
    if origin is typing.Union:
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        errors = []
        for a in inner:
            try:
                return _coerce(a, value, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0])
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        inner = args[0] if args else Any
        out = [_coerce(inner, v, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(out) if origin is tuple else out
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        vt = args[1] if len(args) == 2 else Any
        return {k: _coerce(vt, v, f"{key}.{k}") for k, v in value.items()}
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{key}: {value!r} is not one of {list(args)}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true/false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    return value


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict:
    """Recursively merge ``override`` into a copy of ``base`` (override files like paper.yaml)."""
    out = copy.deepcopy(dict(base))
    for k, v in override.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


# --- values no schema keyword refuses ----------------------------------------------

# Characters a ``paths.*`` value may not hold: the shell's command substitution / expansion (``$``,
# backtick), command separators and redirections (``; | & < >``), and line breaks / NUL. The rules
# quote every value (``{x:q}``, shlex.quote: snakemake/utils.py QuotedFormatter), so this is the
# second line of defence; the schema says the same with ``not: {pattern: ...}``.
UNSAFE_PATH_CHARS = "$`;|&<>\n\r\x00"
# Snakemake renders a config file holding ``__use_yte__: true`` with the YTE template engine, which
# evaluates Python expressions in it (snakemake PR #2269; snakemake/common/configfile.py calls
# ``yte.process_yaml(f, require_use_yte=True)``). pclbench never does, and refuses such files.
YTE_KEY = "__use_yte__"


def check_config_values(cfg: Any, where: str = "") -> None:
    """Refuse what the JSON schema lets through: NaN / +-inf anywhere, unsafe ``paths.*`` characters.

    YAML's ``.nan`` / ``.inf`` / ``-.inf`` and JSON's ``NaN`` / ``Infinity`` (both accepted by Python's
    ``yaml`` and ``json``) parse to floats, which jsonschema's ``type: number`` accepts, and every
    ``minimum`` comparison with NaN is False, so a range check passes too. One recursive walk here
    covers every key, list elements included; the error names the key path (``probe.grid[1]``).
    """
    if isinstance(cfg, float) and not math.isfinite(cfg):
        raise ConfigError(f"config error at {where or '<root>'}: {cfg!r} is not a finite number "
                          f"(NaN and infinities are refused)")
    if isinstance(cfg, Mapping):
        if not where and YTE_KEY in cfg:
            raise ConfigError(f"config error at {YTE_KEY}: YTE-templated configs are refused (Snakemake "
                              f"would evaluate Python expressions in them); write plain YAML values")
        for k, v in cfg.items():
            check_config_values(v, f"{where}.{k}" if where else str(k))
        paths = cfg.get("paths") if not where else None
        if isinstance(paths, Mapping):
            for k, v in paths.items():
                bad = sorted({c for c in v if c in UNSAFE_PATH_CHARS}) if isinstance(v, str) else []
                if bad:
                    raise ConfigError(f"config error at paths.{k}: {v!r} holds {', '.join(map(repr, bad))}; "
                                      f"a path may not contain any of {UNSAFE_PATH_CHARS!r} (shell syntax)")
    elif isinstance(cfg, (list, tuple)):
        for i, v in enumerate(cfg):
            check_config_values(v, f"{where}[{i}]")
