"""Config loading: strict dataclass sections, schema validation, errors that name the key."""
from __future__ import annotations

import dataclasses
import importlib
import subprocess
import sys
import typing
from typing import Literal, Optional

import pytest

from pclbench.core.config import ConfigError, deep_merge, from_dict

# (config section, module, dataclass): every stage's settings must come entirely from config.yaml.
SECTIONS = [
    ("synth", "pclbench.data.synth", "SynthConfig"),
    ("align", "pclbench.align.aligner", "AlignConfig"),
    ("views", "pclbench.pretrain.views", "ViewConfig"),
    ("pretrain", "pclbench.pretrain.trainer", "PretrainConfig"),
    ("evaluate", "pclbench.evaluate.extract", "EvaluateConfig"),
    ("model", "pclbench.models", "ModelConfig"),
    ("pcl", "pclbench.pretrain.methods.pcl", "PCLConfig"),
    ("augment", "pclbench.pretrain.augment", "AugmentConfig"),
    ("simclr", "pclbench.pretrain.methods.simclr", "SimCLRConfig"),
    ("moco", "pclbench.pretrain.methods.moco", "MoCoConfig"),
    ("byol", "pclbench.pretrain.methods.byol", "BYOLConfig"),
    ("download", "pclbench.data.download", "DownloadConfig"),
    ("video", "pclbench.data.video", "VideoConfig"),
]


@dataclasses.dataclass
class Inner:
    lr: float
    mode: Literal["fixed", "faithful"]


@dataclasses.dataclass
class Outer:
    name: str
    steps: int
    inner: Inner
    sizes: list[int]
    note: Optional[str]


GOOD = {"name": "x", "steps": 3, "inner": {"lr": 1, "mode": "fixed"}, "sizes": [1, 2], "note": None}


def test_from_dict_builds_nested():
    o = from_dict(Outer, GOOD, "top")
    assert o.inner.lr == 1.0 and isinstance(o.inner.lr, float) and o.sizes == [1, 2]


@pytest.mark.parametrize("patch, key", [
    ({"stepz": 1}, "top.stepz"),
    ({"inner": {"lr": 1, "mode": "fixed", "extra": 0}}, "top.inner.extra"),
    ({"inner": {"lr": "fast", "mode": "fixed"}}, "top.inner.lr"),
    ({"inner": {"lr": 1, "mode": "sloppy"}}, "top.inner.mode"),
    ({"steps": True}, "top.steps"),
    ({"sizes": [1, "two"]}, "top.sizes[1]"),
])
def test_from_dict_errors_name_the_key(patch, key):
    with pytest.raises(ConfigError, match=key.replace("[", r"\[").replace("]", r"\]")):
        from_dict(Outer, {**GOOD, **patch}, "top")


def test_from_dict_missing_key():
    data = dict(GOOD)
    del data["steps"]
    with pytest.raises(ConfigError, match="missing key top.steps"):
        from_dict(Outer, data, "top")


def test_deep_merge_does_not_mutate():
    base = {"a": {"b": 1, "c": 2}}
    out = deep_merge(base, {"a": {"b": 5}})
    assert out == {"a": {"b": 5, "c": 2}} and base == {"a": {"b": 1, "c": 2}}


def test_default_config_is_valid(default_config):
    assert set(default_config["workflow"]["methods"]) >= {"random", "pcl"}


@pytest.mark.parametrize("section, module, cls", SECTIONS)
def test_sections_fill_their_dataclass_without_defaults(default_config, section, module, cls):
    """Every field of every stage's dataclass is set by config.yaml: no hidden code defaults."""
    klass = getattr(importlib.import_module(module), cls)
    for f in dataclasses.fields(klass):
        assert f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING, \
            f"{cls}.{f.name} has a code default; put the value in config/config.yaml"
    from_dict(klass, default_config[section], section)


@pytest.mark.parametrize("override", ["config/tiny.yaml", "config/paper.yaml"])
def test_override_files_are_valid(repo_root, override):
    from pclbench.cli import load_config

    cfg = load_config([repo_root / "config" / "config.yaml", repo_root / override])
    for section, module, cls in SECTIONS:
        from_dict(getattr(importlib.import_module(module), cls), cfg[section], section)


def test_cli_rejects_wrong_value_naming_the_key(tmp_path, repo_root):
    bad = tmp_path / "bad.yaml"
    bad.write_text("evaluate:\n  batch_size: -4\n")
    proc = subprocess.run([sys.executable, "-m", "pclbench", "validate-config",
                           "--config", str(repo_root / "config" / "config.yaml"), "--config", str(bad)],
                          capture_output=True, text=True, cwd=repo_root,
                          env={"PYTHONPATH": str(repo_root / "src"), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 2
    assert "evaluate.batch_size" in proc.stderr, proc.stderr


def test_cli_rejects_unknown_key(tmp_path, repo_root):
    from pclbench.cli import load_config

    bad = tmp_path / "bad.yaml"
    bad.write_text("evaluate:\n  batchsize: 4\n")
    with pytest.raises(ConfigError, match="batchsize"):
        load_config([repo_root / "config" / "config.yaml", bad])


def test_unquoted_compile_off_as_dvc_exp_run_writes_it(tmp_path):
    """`dvc exp run -S` rewrites config.yaml with a YAML 1.2 writer, which leaves `off` unquoted;
    YAML 1.1 readers (PyYAML, hence Snakemake and pclbench) then read false. It must still mean off."""
    from pclbench.cli import load_config
    from pclbench.core.config import DEFAULT_CONFIG
    from pclbench.pretrain.trainer import PretrainConfig

    text = DEFAULT_CONFIG.read_text()
    assert '  compile: "off"\n' in text
    edited = tmp_path / "config.yaml"
    edited.write_text(text.replace('  compile: "off"\n', "  compile: off\n"))
    cfg = load_config([edited])  # schema-validated
    assert cfg["pretrain"]["compile"] is False
    assert PretrainConfig.from_config(cfg["pretrain"]).compile == "off"
    # any other boolean is still refused
    edited.write_text(text.replace('  compile: "off"\n', "  compile: on\n"))
    with pytest.raises(ConfigError, match="compile"):
        load_config([edited])


def _section_models():
    from pclbench.core.schema_gen import SECTION_MODELS

    return list(SECTION_MODELS)


def _config_keys_match_model(value, cls, where):
    """Every key of config.yaml's ``value`` is a field of model ``cls`` and every field a key, recursively."""
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    assert set(value) == fields, f"{where}: config.yaml keys {sorted(value)} != model fields {sorted(fields)}"
    for name in fields:
        if dataclasses.is_dataclass(hints[name]):
            _config_keys_match_model(value[name], hints[name], f"{where}.{name}")


@pytest.mark.parametrize("section", _section_models())
def test_schema_section_and_dataclass_have_the_same_keys(default_config, section):
    """The schema (workflow/schemas/config.schema.yaml, generated from the section models), the model that
    reads a section and config/config.yaml (the commented manual) name the same keys, and the schema
    refuses unknown ones: none of the three can drift apart silently."""
    from pclbench.core.schema import load_schema
    from pclbench.core.schema_gen import section_models

    klass = section_models()[section]
    props = load_schema()["properties"][section]
    assert set(props.get("properties", {})) == {f.name for f in dataclasses.fields(klass)}, section
    assert props.get("additionalProperties") is False, f"schema section {section} accepts unknown keys"
    _config_keys_match_model(default_config[section], klass, section)


# Hand-written wiring entries read with from_dict: (schema path in workflow/schemas/wiring.schema.yaml, module,
# dataclass). Their schema is not generated, so the keys are compared here.
WIRING_ENTRIES = [
    (("benchmarks", "additionalProperties"), "pclbench.evaluate.benchmark", "Benchmark"),
    (("$defs", "dataset_split"), "pclbench.evaluate.benchmark", "DataRef"),
    (("datasets", "additionalProperties", "properties", "download", "items"), "pclbench.data.download", "FileSpec"),
]


@pytest.mark.parametrize("path, module, cls", WIRING_ENTRIES)
def test_wiring_entries_and_their_dataclass_have_the_same_keys(repo_root, path, module, cls):
    import yaml

    from pclbench.core.schema import load_schema

    wiring = yaml.safe_load((repo_root / "workflow" / "schemas" / "wiring.schema.yaml").read_text())
    for schema in (wiring, load_schema()):  # the hand-written file and the generated one that holds it
        node = schema if path[0] == "$defs" else schema["properties"]
        for key in path:
            node = node[key]
        klass = getattr(importlib.import_module(module), cls)
        assert set(node["properties"]) == {f.name for f in dataclasses.fields(klass)}, path
        assert node.get("additionalProperties") is False, f"{'.'.join(path)} accepts unknown keys"
        assert set(node["required"]) == {f.name for f in dataclasses.fields(klass)}, path


def test_wiring_sections_are_in_the_generated_schema_verbatim(repo_root):
    import yaml

    from pclbench.core.schema import load_schema

    wiring = yaml.safe_load((repo_root / "workflow" / "schemas" / "wiring.schema.yaml").read_text())
    schema = load_schema()
    for key, value in wiring.items():
        if key != "properties":
            assert schema[key] == value, key
    for section, value in wiring["properties"].items():
        assert schema["properties"][section] == value, section
        assert section in schema["required"], section
