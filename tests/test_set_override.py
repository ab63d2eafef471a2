"""``--set KEY=VALUE`` (pclbench.core.overrides): on every subcommand that reads the config, and in the
workflow as ``snakemake --config set=...``.

External facts the tests rely on:
- Snakemake's ``--config`` takes top-level keys only (snakemake/cli.py ``parse_config``: the key must
  match ``[a-zA-Z_][\\w-]*\\w``) and parses a value ``[...]`` with YAML's BaseLoader (a list of strings);
  the Snakemake docs ("Snakefiles > Configuration") let a workflow alter ``config`` in Python.
- PyYAML (YAML 1.1) reads ``1e-4`` as a string (a float needs a dot) and ``off`` as false.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pclbench.cli import build_parser, load_config, main
from pclbench.core.config import ConfigError
from pclbench.core.dvc_export import snakemake_jobs
from pclbench.core.overrides import apply_overrides

ROOT = Path(__file__).resolve().parents[1]

# A hand-written schema and config: the reference the helper is checked against.
SCHEMA = {
    "type": "object",
    "properties": {
        "a": {"type": "object", "properties": {
            "n": {"type": "integer"},
            "x": {"type": "number"},
            "name": {"type": "string"},
            "mode": {"enum": ["off", False, "on"]},
            "opt": {"type": ["string", "null"]},
            "grid": {"type": "array", "items": {"type": "number"}},
            "sub": {"$ref": "#/$defs/sub"},
        }},
        "entries": {"type": "object", "additionalProperties": {"type": "object", "properties": {"k": {"type": "integer"}}}},
    },
    "$defs": {"sub": {"type": "object", "properties": {"on": {"type": "boolean"}, "t": {"type": "number"}}}},
}
CONFIG = {"a": {"n": 1, "x": 0.5, "name": "n", "mode": "off", "opt": None, "grid": [1.0], "sub": {"on": True, "t": 2.0}},
          "entries": {"e1": {"k": 3}}}


@pytest.mark.parametrize("item, path, expected", [
    ("a.n=16", ("a", "n"), 16),
    ("a.x=1e-4", ("a", "x"), 1e-4),  # YAML 1.1 reads a string; the schema says number
    ("a.x=2", ("a", "x"), 2),
    ("a.name=2024", ("a", "name"), "2024"),  # a string key keeps the text
    ("a.name=true", ("a", "name"), "true"),
    ("a.mode=off", ("a", "mode"), False),  # the enum takes false as well: YAML's reading stands
    ("a.opt=null", ("a", "opt"), None),
    ("a.opt=12", ("a", "opt"), "12"),
    ("a.grid=[0.1, 1, 10]", ("a", "grid"), [0.1, 1, 10]),
    ("a.sub.on=false", ("a", "sub", "on"), False),  # nested, through a $ref
    ("a.sub={t: 3.5}", ("a", "sub"), {"on": True, "t": 3.5}),  # a mapping is merged
    ("entries.e1.k=7", ("entries", "e1", "k"), 7),  # additionalProperties
    ("a.n=abc", ("a", "n"), "abc"),  # the wrong type is left for the schema check to name
])
def test_helper_against_hand_written_expectations(item, path, expected):
    out = apply_overrides(CONFIG, [item], SCHEMA)
    node = out
    for p in path:
        node = node[p]
    assert node == expected and type(node) is type(expected)
    assert CONFIG["a"]["n"] == 1 and CONFIG["a"]["sub"] == {"on": True, "t": 2.0}  # the input is not changed


def test_helper_applies_in_order_and_refuses_unknown_keys():
    assert apply_overrides(CONFIG, ["a.n=2", "a.n=3"], SCHEMA)["a"]["n"] == 3
    with pytest.raises(ConfigError, match=r"unknown key a\.nn; keys under a: n, x, name"):
        apply_overrides(CONFIG, ["a.nn=1"], SCHEMA)
    with pytest.raises(ConfigError, match=r"unknown key entries\.e2"):
        apply_overrides(CONFIG, ["entries.e2.k=1"], SCHEMA)
    with pytest.raises(ConfigError, match=r"a\.grid is not a mapping"):
        apply_overrides(CONFIG, ["a.grid.0=1"], SCHEMA)
    for bad in ("a.n", "=1", "a..n=1"):
        with pytest.raises(ConfigError, match="expected KEY=VALUE"):
            apply_overrides(CONFIG, [bad], SCHEMA)
    with pytest.raises(ConfigError, match="not a YAML value"):
        apply_overrides(CONFIG, ["a.grid=[1, 2"], SCHEMA)


# --- the CLI ---------------------------------------------------------------------------------------

def test_every_config_reading_subcommand_takes_set():
    sub = next(a for a in build_parser()._actions if a.__class__.__name__ == "_SubParsersAction")
    for name, p in sub.choices.items():
        has_config = any("--config" in a.option_strings for a in p._actions)
        has_set = any("--set" in a.option_strings for a in p._actions)
        assert has_set == has_config, name


def test_cli_values_are_typed_by_the_schema():
    cfg = load_config(sets=["pcl.n_negatives=16", "pretrain.lr=1e-4", "pcl.dwa.enabled=false",
                            "paths.results=2024", "pretrain.compile=off", "figures.curve_prefixes=[loss_, acc_]",
                            "paths.logs=null"])
    assert cfg["pcl"]["n_negatives"] == 16 and isinstance(cfg["pcl"]["n_negatives"], int)
    assert cfg["pretrain"]["lr"] == 1e-4 and isinstance(cfg["pretrain"]["lr"], float)
    assert cfg["pcl"]["dwa"] == {**load_config()["pcl"]["dwa"], "enabled": False}
    assert cfg["paths"]["results"] == "2024"
    assert cfg["pretrain"]["compile"] is False  # the schema allows false (= off): YAML's reading stands
    assert cfg["figures"]["curve_prefixes"] == ["loss_", "acc_"]
    assert cfg["paths"]["logs"] is None


def test_cli_set_comes_after_files_and_params(tmp_path):
    extra = tmp_path / "extra.yaml"
    extra.write_text("pcl:\n  n_negatives: 8\n")
    assert load_config([ROOT / "config" / "config.yaml", extra])["pcl"]["n_negatives"] == 8
    assert load_config([ROOT / "config" / "config.yaml", extra], sets=["pcl.n_negatives=4"])["pcl"]["n_negatives"] == 4
    params = json.dumps({"pcl": load_config()["pcl"]})
    assert load_config(params=params, sets=["pcl.n_negatives=5"]) == {"pcl": {**load_config()["pcl"], "n_negatives": 5}}
    # a partial config (--params): only its own keys can be set
    with pytest.raises(ConfigError, match="unknown key probe; keys under <root>: pcl"):
        load_config(params=params, sets=["probe.n_seeds=3"])


@pytest.mark.parametrize("item, message", [
    ("pcl.n_negativez=16", "unknown key pcl.n_negativez; keys under pcl:"),
    ("pcl.n_negatives=abc", "config error at pcl.n_negatives: 'abc' is not of type 'integer'"),
    ("pcl.n_negatives=[1, 2]", "config error at pcl.n_negatives:"),
    ("pretrain.lr=.nan", "config error at pretrain.lr: nan is not a finite number"),
    ("pretrain.lr=nan", "config error at pretrain.lr: nan is not a finite number"),
    ("pretrain.lr=-inf", "config error at pretrain.lr: -inf is not a finite number"),
    ("paths.results=out;rm -rf ~", "config error at paths.results: 'out;rm -rf ~' holds ';'"),
    ("paths.results=$(touch pwned)", "config error at paths.results:"),
])
def test_cli_refuses_with_the_key_path(item, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["validate-config", "--set", item]) == 2
    err = capsys.readouterr().err
    assert message in err, err
    assert not (tmp_path / "pwned").exists()


def test_cli_set_in_a_subprocess(tmp_path):
    r = subprocess.run([sys.executable, "-m", "pclbench", "validate-config", "--set", "pcl.n_negatives=16",
                        "--set", "seed=1"], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert r.returncode == 0 and "config OK" in r.stdout, r.stderr


# --- the workflow ----------------------------------------------------------------------------------

def _params(jobs):
    return {(j["rule"], tuple(j["output"])): j["params"] for j in jobs}


@pytest.fixture(scope="module")
def default_jobs():
    return snakemake_jobs()


def test_workflow_set_changes_the_params_of_the_affected_jobs_only(default_jobs):
    base = _params(default_jobs)
    changed = _params(snakemake_jobs(sets=["pcl.n_negatives=16"]))
    assert set(base) == set(changed)
    diff = sorted(k for k in base if base[k] != changed[k])
    # pcl and its variant pcl_wo_pdd read `pcl`; random (model + pretrain) does not
    assert [(rule, out[0].split("/")[2]) for rule, out in diff] == [("pretrain", "pcl"), ("pretrain", "pcl_wo_pdd")]
    for k in diff:
        assert json.loads(changed[k])["pcl"]["n_negatives"] == 16
    # a probe setting: every probe job, and nothing else
    diff = {k[0] for k, v in _params(snakemake_jobs(sets=["probe.n_seeds=2"])).items() if base[k] != v}
    assert diff == {"probe"}


def _snakemake(tmp_path, *config):
    return subprocess.run([sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "-n", "--cores", "1",
                           "--directory", str(tmp_path), "--config", *config],
                          capture_output=True, text=True, timeout=600)


def test_workflow_set_on_the_command_line(tmp_path):
    ok = _snakemake(tmp_path, 'set=["pcl.n_negatives=16", "pretrain.lr=1e-4"]')
    assert ok.returncode == 0, ok.stderr[-3000:]
    bad = _snakemake(tmp_path, "set=pcl.n_negativez=16")
    assert bad.returncode != 0
    assert "unknown key pcl.n_negativez" in bad.stderr + bad.stdout
    shell = _snakemake(tmp_path, "set=paths.results=$(touch pwned)")
    assert shell.returncode != 0 and "paths.results" in shell.stderr + shell.stdout
    assert not (tmp_path / "pwned").exists()
