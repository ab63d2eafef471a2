"""One declaration of the config keys each stage reads (pclbench.core.stages), and its three readers:
the Snakemake rules' params (read back from the DAG through Snakemake's API), the DVC params of a
freshly generated dvc.yaml (``python -m pclbench dvc-yaml --out <tmp>``) and the CLI's check of the
config it received. A job re-runs when its params change, so a stage listing a section it does not
read re-runs for nothing: ``random`` (an untrained encoder) must not list PCL's sections.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pclbench.cli import load_config, main
from pclbench.core.dvc_export import param_keys, snakemake_jobs, stage_name
from pclbench.core.stages import SECTIONS, method_sections, stage_config, stage_keys
from pclbench.data.parsers import PARSER_SECTIONS
from pclbench.pretrain.methods import METHODS, BYOL, MoCo, PCL, RandomInit, SimCLR

ROOT = Path(__file__).resolve().parents[1]
CONFIG = load_config()
# Every method, two variants, real datasets (url and manual), a VoxCeleb pretraining set (a parser
# with its own section): every kind of stage and name lookup is in this DAG.
WIDE = {"workflow": {"methods": ["random", "pcl", "pcl_wo_pdd", "pcl_faithful", "simclr", "moco", "byol"],
                     "benchmarks": ["synth_expression", "synth_verification", "synth_au", "synth_pose", "lfw",
                                    "aflw2000"],
                     "pretrain_dataset": "voxceleb1", "pretrain_split": "train"}}


def _names(job):
    return {k: v for k, v in job["wildcards"].items() if k in ("dataset", "method", "benchmark")}


@pytest.fixture(scope="module")
def wide(tmp_path_factory):
    path = tmp_path_factory.mktemp("wide") / "wide.yaml"
    path.write_text(yaml.safe_dump(WIDE))
    config = load_config([ROOT / "config" / "config.yaml", path])
    return config, snakemake_jobs([path])


def test_method_declarations_are_the_methods_own():
    assert {m: method_sections(m) for m in METHODS} == {
        m: tuple(cls.config_sections) for m, cls in
        {"pcl": PCL, "random": RandomInit, "simclr": SimCLR, "moco": MoCo, "byol": BYOL}.items()}
    assert stage_keys(CONFIG, "pretrain", method="random") == ("pretrain", "model")
    assert set(stage_keys(CONFIG, "pretrain", method="pcl")) == {"pretrain", "model", "pcl", "views"}
    assert set(stage_keys(CONFIG, "pretrain", method="pcl_wo_pdd")) == {"pretrain", "model", "pcl", "views",
                                                                          "variants.pcl_wo_pdd"}
    assert stage_keys(CONFIG, "prepare", dataset="voxceleb1") == ("datasets.voxceleb1",) + PARSER_SECTIONS["voxceleb1"]
    assert stage_keys(CONFIG, "probe", benchmark="lfw") == ("probe", "seed", "benchmarks.lfw", "tasks.verification")


def test_snakemake_params_are_the_declaration(wide):
    config, jobs = wide
    rules = set()
    for job in jobs:
        rules.add(job["rule"])
        declared = stage_config(config, job["rule"], **_names(job))
        assert json.loads(job["params"] or "{}") == json.loads(json.dumps(declared)), job["rule"]
        assert job["sections"] == param_keys(json.loads(json.dumps(declared)), config)
    assert rules >= {"generate", "acquire", "prepare", "align", "pretrain", "extract", "probe", "tables",
                     "figure_bars", "figure_curves", "figure_swap_grid", "figure_embedding", "contact_sheet"}
    by_method = {j["wildcards"]["method"]: json.loads(j["params"]) for j in jobs if j["rule"] == "pretrain"}
    assert sorted(by_method["random"]) == ["model", "pretrain"]
    assert sorted(by_method["pcl"]) == ["model", "pcl", "pretrain", "views"]
    assert sorted(by_method["simclr"]) == ["augment", "model", "pretrain", "simclr", "views"]
    assert sorted(by_method["pcl_wo_pdd"]) == ["model", "pcl", "pretrain", "variants", "views"]
    assert config["variants"]["pcl_wo_pdd"]["overrides"] == {"pcl": {"ablation": {"pdd": False}}}
    assert by_method["pcl_wo_pdd"]["pcl"]["ablation"] == {**config["pcl"]["ablation"], "pdd": False}
    assert {k: v for k, v in by_method["pcl_wo_pdd"]["pcl"].items() if k != "ablation"} == {
        k: v for k, v in config["pcl"].items() if k != "ablation"}
    prepare = [json.loads(j["params"]) for j in jobs if j["rule"] == "prepare" and j["wildcards"]["dataset"] == "voxceleb1"]
    assert prepare and sorted(prepare[0]) == ["datasets", "video"]


def test_dvc_params_are_the_declaration(tmp_path):
    out = tmp_path / "dvc.yaml"
    r = subprocess.run([sys.executable, "-m", "pclbench", "dvc-yaml", "--out", str(out)], cwd=ROOT,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    stages = yaml.safe_load(out.read_text())["stages"]
    expected: dict[str, set] = {}
    for job in snakemake_jobs():
        declared = json.loads(json.dumps(stage_config(CONFIG, job["rule"], **_names(job))))
        expected.setdefault(stage_name(job), set()).update(param_keys(declared, CONFIG))
    assert set(stages) == set(expected)
    for name, stage in stages.items():
        listed = {k for entry in stage.get("params", []) for keys in entry.values() for k in keys}
        assert listed == expected[name], name
    assert {k for e in stages["pretrain-random"]["params"] for ks in e.values() for k in ks} == {"model", "pretrain"}


def test_every_workflow_rule_has_a_declaration():
    text = "\n".join(p.read_text() for p in sorted((ROOT / "workflow" / "rules").glob("*.smk")))
    rules = {line.split()[1].rstrip(":") for line in text.splitlines() if line.strip().startswith("rule ")}
    assert rules - {"align_part", "align_merge"} <= set(SECTIONS), rules - set(SECTIONS)
    assert "params_json" not in text  # the rules build their params from the declaration only


@pytest.mark.parametrize("argv, missing", [
    (["pretrain", "--method", "pcl", "--data", "x", "--out", "y"], "pcl, views"),
    (["pretrain", "--method", "simclr", "--data", "x", "--out", "y"], "views, augment, simclr"),
    (["probe", "--benchmark", "lfw", "--method", "m", "--features-root", "f", "--aligned-root", "a",
      "--raw-root", "r", "--out", "o"], "probe, seed, tasks.verification"),
    (["prepare", "--dataset", "voxceleb1", "--source", "s", "--out", "o"], "video"),
    (["extract", "--checkpoint", "c", "--data", "d", "--out", "o"], "evaluate"),
    (["generate", "--dataset", "synth_vox", "--out", "o"], "synth"),
    (["acquire", "--dataset", "lfw", "--sources", "s", "--receipt", "r.json"], "download"),
])
def test_cli_checks_what_it_received(argv, missing, capsys, tmp_path, monkeypatch):
    """--params without a key the stage declares: refused before any work, naming the keys."""
    monkeypatch.chdir(tmp_path)
    present = {"pretrain": ["pretrain", "model"], "probe": ["benchmarks"], "prepare": ["datasets"],
               "extract": [], "generate": [], "acquire": ["datasets"]}[argv[0]]
    params = {s: CONFIG[s] for s in present}
    assert main([argv[0], "--params", json.dumps(params), *argv[1:]]) == 2
    err = capsys.readouterr().err
    assert f"reads the config key(s) {missing} (pclbench.core.stages)" in err, err
    assert list(tmp_path.iterdir()) == []
