"""``--set KEY=VALUE``: one config key, named by its dotted path, set on top of the config files.

Every ``pclbench`` subcommand that reads the config takes repeated ``--set`` (merged last, after
``--config`` files and ``--params``); the workflow takes the same items as ``snakemake --config
set=KEY=VALUE`` or ``snakemake --config 'set=["KEY=VALUE", ...]'`` (Snakemake's ``--config`` only
sets top-level keys: ``[a-zA-Z_][\\w-]*\\w`` in snakemake/cli.py ``parse_config``; its docs,
"Snakefiles > Configuration", let a workflow alter the config dict in Python, which
``workflow/rules/common.smk`` does with :func:`apply_overrides` before validating).

* ``KEY`` names a key the config already holds (``pcl.n_negatives``, ``pcl.dwa.enabled``); an
  unknown key is refused with its path and the keys that exist there. New entries (a dataset, a
  variant) belong in a ``--config`` file.
* ``VALUE`` is read as a YAML scalar or flow value (``16``, ``1.5``, ``true``, ``null``, ``[0.1, 1]``,
  ``{enabled: false}``), then typed by the config schema (generated from the sections' typed models):
  where the key takes a string the text is kept as written (``--set paths.results=2024`` is the
  folder ``"2024"``, not a number), and where it takes a number a float in Python's notation is
  read as one (``1e-4``, which YAML 1.1 reads as a string). Everything else is left to the checks
  every config gets (:func:`pclbench.core.config.check_config_values`: NaN / infinities, shell
  syntax in ``paths.*``; then the schema), which name the key.
"""
from __future__ import annotations

from typing import Any, Iterable, Mapping

import yaml

from pclbench.core.config import ConfigError, deep_merge

_JSON_TYPES = {
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "string": lambda v: isinstance(v, str),
    "null": lambda v: v is None,
    "array": lambda v: isinstance(v, list),
    "object": lambda v: isinstance(v, dict),
}


def split_override(item: str) -> tuple[list[str], str]:
    """``"pcl.dwa.enabled=false"`` -> ``(["pcl", "dwa", "enabled"], "false")``."""
    key, sep, text = item.partition("=")
    path = key.strip().split(".")
    if not sep or not all(path):
        raise ConfigError(f"--set {item!r}: expected KEY=VALUE with KEY a dotted config key (pcl.n_negatives=16)")
    return path, text


def _resolve(node: Any, schema: Mapping) -> Any:
    while isinstance(node, Mapping) and "$ref" in node:
        ref = node["$ref"]
        if not ref.startswith("#/"):
            return None
        target: Any = schema
        for part in ref[2:].split("/"):
            target = target.get(part) if isinstance(target, Mapping) else None
        node = target
    return node


def schema_at(schema: Mapping, path: list[str]) -> list[Mapping]:
    """The subschemas that describe the value at ``path`` (every branch of oneOf / anyOf / allOf)."""
    nodes = [schema]
    for part in path:
        nxt = []
        for node in _branches(nodes, schema):
            props = node.get("properties") or {}
            if part in props:
                nxt.append(props[part])
            elif isinstance(node.get("additionalProperties"), Mapping):
                nxt.append(node["additionalProperties"])
        nodes = nxt
    return _branches(nodes, schema)


def _branches(nodes: Iterable[Any], schema: Mapping) -> list[Mapping]:
    out, todo = [], list(nodes)
    while todo:
        node = _resolve(todo.pop(0), schema)
        if not isinstance(node, Mapping):
            continue
        out.append(node)
        for kw in ("oneOf", "anyOf", "allOf"):
            todo += list(node.get(kw) or [])
    return out


def allowed_types(schema: Mapping, path: list[str]) -> set[str]:
    """JSON types the schema allows at ``path`` (empty: the schema does not say)."""
    types: set[str] = set()
    for node in schema_at(schema, path):
        t = node.get("type")
        if isinstance(t, str):
            types.add(t)
        elif isinstance(t, list):
            types.update(t)
        for v in list(node.get("enum") or []) + ([node["const"]] if "const" in node else []):
            types.update(name for name, ok in _JSON_TYPES.items() if ok(v) and name != "number")
    return types


def override_value(path: list[str], text: str, schema: Mapping) -> Any:
    """``text`` as the value of the key at ``path``: YAML, then typed by the schema (module docstring)."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"--set {'.'.join(path)}={text}: not a YAML value ({e})") from None
    types = allowed_types(schema, path)
    if not types or any(_JSON_TYPES[t](value) for t in types if t in _JSON_TYPES):
        return value
    if "string" in types:
        return text  # the key takes a string: the text as written ("2024", "off")
    if "number" in types and isinstance(value, str):
        try:
            return float(text)  # "1e-4": YAML 1.1 wants a dot in a float; NaN / inf are refused later
        except ValueError:
            pass
    return value  # the wrong type: the schema check names the key


def apply_overrides(config: Mapping[str, Any], items: Iterable[str], schema: Mapping) -> dict:
    """``config`` with each ``KEY=VALUE`` of ``items`` set, in order (a copy; the caller validates)."""
    out = dict(config)
    for item in items:
        if not isinstance(item, str):
            raise ConfigError(f"--set {item!r}: expected a KEY=VALUE string")
        path, text = split_override(item)
        node: Any = out
        for i, part in enumerate(path):
            where = ".".join(path[:i]) or "<root>"
            if not isinstance(node, Mapping):
                raise ConfigError(f"--set {item}: {where} is not a mapping (a list is set whole: "
                                  f"--set {where}=[...])")
            if part not in node:
                raise ConfigError(f"--set {item}: unknown key {'.'.join(path[:i + 1])}; keys under {where}: "
                                  f"{', '.join(map(str, node)) or 'none'}")
            node = node[part]
        overlay: Any = override_value(path, text, schema)
        for part in reversed(path):
            overlay = {part: overlay}
        out = deep_merge(out, overlay)
    return out
