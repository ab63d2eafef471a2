"""Validate a config dict against ``workflow/schemas/config.schema.yaml``.

The schema is read from the repository, or from the package data of an installed wheel
(:func:`pclbench.core.resources.resource_path`).

The Snakefile validates with ``snakemake.utils.validate`` (same schema file); the CLI uses this so a
stage run by hand gets the same checks. Errors name the offending key path, e.g.
``config error at pretrain.lr: -1 is less than the minimum of 0``.
"""
from __future__ import annotations

import copy
from functools import lru_cache
from typing import Any

import jsonschema
import yaml

from pclbench.core.config import SCHEMA_PATH, ConfigError


@lru_cache(maxsize=1)
def load_schema() -> dict:
    try:
        with open(SCHEMA_PATH) as fh:
            return yaml.safe_load(fh)
    except FileNotFoundError:  # a wheel built without setup.py's build_py hook
        raise ConfigError(f"config schema {SCHEMA_PATH} not found: a checkout has it in workflow/schemas/, "
                          "an installed pclbench under pclbench/_data/workflow/schemas/") from None


def validate_config(cfg: dict[str, Any], partial: bool = False) -> None:
    """Raise :class:`ConfigError` naming the key when ``cfg`` breaks the schema.

    ``partial``: only the top-level sections present are checked (a rule passes just its own).
    """
    schema = load_schema()
    if partial:
        schema = copy.deepcopy(schema)
        schema.pop("required", None)
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(cfg), key=lambda e: list(e.absolute_path))
    if errors:
        e = errors[0]
        where = ".".join(str(p) for p in e.absolute_path) or "<root>"
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise ConfigError(f"config error at {where}: {e.message}{more}")
