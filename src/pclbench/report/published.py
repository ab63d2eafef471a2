"""The published numbers the tables put next to ours: ``config/published_results.yaml``, validated.

The file (schema ``workflow/schemas/published_results.schema.yaml``) lists sources, columns (a column =
a (benchmark, metric) pair) and methods, each with the name of our methods it ``matches`` and its
transcribed results; a cell nobody transcribed is empty, never a guess. :func:`load_published`
checks the schema and the cross references (a row's or cell's source, a results key).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from pclbench.core.config import ConfigError
from pclbench.core.resources import resource_path

PUBLISHED_SCHEMA = resource_path("workflow/schemas/published_results.schema.yaml")  # repo copy, else package data


@dataclass
class PublishedRow:
    name: str
    matches: list[str]
    protocol: str
    values: dict[tuple[str, str], tuple[float, str]]  # (benchmark, metric) -> (value, source key)


@dataclass
class Published:
    """config/published_results.yaml, validated: rows with their values keyed by (benchmark, metric)."""

    sources: dict[str, dict]
    rows: list[PublishedRow]

    def for_method(self, method: str) -> list[PublishedRow]:
        return [r for r in self.rows if method in r.matches]

    def has(self, benchmark: str, metric: str) -> bool:
        return any((benchmark, metric) in r.values for r in self.rows)

    def source_text(self, key: str) -> str:
        s = self.sources[key]
        return f"{s['title']}, {s['where']}" + (f" ({s['url']})" if s.get("url") else "")


def _check_schema(data: dict, path: Path) -> None:
    import jsonschema

    with open(PUBLISHED_SCHEMA) as fh:
        schema = yaml.safe_load(fh)
    errors = sorted(jsonschema.Draft202012Validator(schema).iter_errors(data), key=lambda e: list(e.absolute_path))
    if errors:
        e = errors[0]
        at = ".".join(str(p) for p in e.absolute_path) or "<root>"
        raise ConfigError(f"{path}: error at {at}: {e.message} (schema {PUBLISHED_SCHEMA.name})")


def load_published(path: Path | str | None) -> Published:
    """Read and validate the published-results YAML (schema + cross references); ``None`` = none."""
    if path is None:
        return Published({}, [])
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"published results file {path} does not exist (config tables.published)")
    with open(path) as fh:
        data = yaml.safe_load(fh) or {}
    _check_schema(data, path)
    sources, columns = data["sources"], data["columns"]
    rows = []
    for i, m in enumerate(data["methods"]):
        at = f"{path}: methods[{i}] ({m['name']})"
        if m["source"] not in sources:
            raise ConfigError(f"{at}: source {m['source']!r} is not under sources (known: {', '.join(sources)})")
        values = {}
        for col, v in (m.get("results") or {}).items():
            if col not in columns:
                raise ConfigError(f"{at}: results key {col!r} is not under columns (known: {', '.join(columns)})")
            if v is None:  # an empty cell: no number transcribed
                continue
            value, src = (v["value"], v["source"]) if isinstance(v, dict) else (v, m["source"])
            if src not in sources:
                raise ConfigError(f"{at}: results.{col}: source {src!r} is not under sources")
            values[(columns[col]["benchmark"], columns[col]["metric"])] = (float(value), src)
        rows.append(PublishedRow(m["name"], list(m["matches"]), m.get("protocol", ""), values))
    return Published(sources, rows)
