"""Hostile configs and checkpoints: refused with a message, never executed.

External facts the tests rely on:
- Snakemake's ``shell:`` substitutions are shell-quoted only with the ``:q`` format spec
  (snakemake/utils.py ``QuotedFormatter``: ``shlex.quote`` when the spec ends with ``q``;
  ``SequenceFormatter`` quotes each element of a list); Snakemake docs "Rules > Shell commands".
- Snakemake renders a config file with ``__use_yte__: true`` through YTE, which evaluates Python
  (snakemake PR #2269; snakemake/common/configfile.py ``yte.process_yaml(f, require_use_yte=True)``).
- PyYAML reads ``.nan`` / ``.inf`` / ``-.inf`` as floats, Python's json reads ``NaN`` / ``Infinity``, and
  jsonschema's ``type: number`` accepts float('nan') (checked below, so the test fails if that changes).
- torch.load(weights_only=True) refuses a pickle GLOBAL outside its allow-list with
  ``Unsupported global: GLOBAL <module>.<name> was not an allowed global by default`` and one of a
  blocked module (os/posix) with ``Trying to load unsupported GLOBAL posix.system whose module posix is
  blocked`` (torch/_weights_only_unpickler.py), wrapped by torch/serialization.py ``_get_wo_message``
  in a multi-line text whose first line does not name it.
"""
from __future__ import annotations

import ast
import io
import json
import os
import shlex
import string
import subprocess
import sys
import tokenize
import uuid
from pathlib import Path

import jsonschema
import pytest
import torch
import yaml

from pclbench import cli
from pclbench.pretrain.checkpoint import FORMAT, CheckpointError, load_checkpoint, load_encoder, save_checkpoint
from pclbench.core.config import ConfigError, check_config_values
from pclbench.models import build_encoder
from pclbench.models.encoders import MAX_ENCODER_PARAM_BYTES, facecycle_param_count
from pclbench.pretrain.import_official import import_official
from pclbench.core.schema import load_schema, validate_config

ROOT = Path(__file__).resolve().parents[1]
RULES = sorted((ROOT / "workflow" / "rules").glob("*.smk")) + [ROOT / "Snakefile"]
SNAKEMAKE = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile")]
TINY = [str(ROOT / "config" / "config.yaml"), str(ROOT / "config" / "tiny.yaml")]


# --- D1: every shell substitution is quoted -------------------------------------------------------

def shell_strings(source: str) -> list[tuple[int, str]]:
    """(line, text) of every ``shell:`` directive: its adjacent string literals, concatenated.

    Snakemake files tokenize as Python (``rule x:`` / ``shell:`` are NAME OP tokens), so the literal
    values are read with the tokenizer + ast.literal_eval, not a regex over the source.
    """
    toks = list(tokenize.generate_tokens(io.StringIO(source).readline))
    out = []
    skip = {tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.COMMENT}
    for i, t in enumerate(toks[:-1]):
        if t.type == tokenize.NAME and t.string == "shell" and toks[i + 1].string == ":":
            parts, j = [], i + 2
            while j < len(toks) and (toks[j].type in skip or toks[j].type == tokenize.STRING):
                if toks[j].type == tokenize.STRING:
                    parts.append(ast.literal_eval(toks[j].string))
                j += 1
            out.append((t.start[0], "".join(parts)))
    return out


def unquoted_fields(command: str) -> list[str]:
    """Substitutions of a Snakemake shell string whose format spec does not end with ``q``."""
    return [f"{{{name}{':' + spec if spec else ''}}}" for _, name, spec, _ in string.Formatter().parse(command)
            if name is not None and not (spec or "").endswith("q")]


def test_checker_finds_unquoted_substitution():
    src = 'rule a:\n    output: "x"\n    shell:\n        "cat {input:q} "\n        "> {output} 2>&1"\n'
    assert shell_strings(src) == [(3, "cat {input:q} > {output} 2>&1")]
    assert unquoted_fields("cat {input:q} > {output} {{literal}}") == ["{output}"]


def test_every_shell_substitution_is_quoted():
    found, bad = 0, []
    for path in RULES:
        for line, cmd in shell_strings(path.read_text()):
            found += 1
            bad += [f"{path.name}:{line}: {f}" for f in unquoted_fields(cmd)]
    assert found >= 15, f"only {found} shell directives found: the parser missed some"
    assert not bad, "unquoted substitutions in shell directives (add :q):\n" + "\n".join(bad)


def run_snakemake(workdir: Path, *args: str, configfiles=TINY) -> subprocess.CompletedProcess:
    cmd = SNAKEMAKE + ["-d", str(workdir), "--nolock", "--configfile", *configfiles, *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600)


def test_dry_run_refuses_command_substitution_in_path(tmp_path):
    marker = Path(f"/tmp/pwn_{uuid.uuid4().hex}")
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"paths": {"raw": f"data/raw$(touch {marker})"}}))
    proc = run_snakemake(tmp_path, "-n", "-p", "--cores", "1", configfiles=TINY + [str(bad)])
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out[-3000:]
    assert "paths.raw" in out and "shell syntax" in out, out[-3000:]
    assert not marker.exists()


def test_dry_run_quotes_path_with_space_and_quote(tmp_path):
    raw = "data/raw dir/it's (x)"
    good = tmp_path / "spaces.yaml"
    # raf_db is licence-gated and not in place: its "not run" reason (spaces, parentheses, backticks
    # of the message, the sources path) reaches `tables` and `figures bars` as one argument
    good.write_text(yaml.safe_dump({"paths": {"raw": raw, "results": "res ults", "sources": "my sources"},
                                    "workflow": {"benchmarks": ["synth_expression", "synth_pose", "raf_db"]}}))
    proc = run_snakemake(tmp_path, "-n", "-p", "--cores", "1", "--forceall", configfiles=TINY + [str(good)])
    assert proc.returncode == 0, proc.stderr[-5000:]
    # `-p` prints each job's command as "Shell command: <cmd>" (snakemake 8/9)
    cmds = [ln.removeprefix("Shell command: ") for ln in proc.stdout.splitlines() if " -m pclbench" in ln]
    generate = [ln for ln in cmds if " -m pclbench generate " in ln]
    assert generate, proc.stdout[-3000:]
    for ln in generate:
        words = shlex.split(ln)  # what the shell will see: each path one word, untouched
        out = words[words.index("--out") + 1]
        assert out.startswith(raw + "/"), ln
        log = words[words.index("--log") + 1]  # the command owns its log (pclbench.core.joblog)
        assert log.startswith("res ults/logs/generate/"), ln
    # the list-valued params (not-run reasons, task names) and interpreter are quoted word by word
    tables = next(ln for ln in cmds if " -m pclbench tables " in ln)
    words = shlex.split(tables)
    assert words[0] == sys.executable and words[1:4] == ["-m", "pclbench", "tables"]
    bars = shlex.split(next(ln for ln in cmds if " figures " in ln and " bars " in ln))
    i = bars.index("--tasks")
    assert bars[i + 1:i + 3] == ["expression", "pose"], bars
    for words in (shlex.split(tables), bars):
        reason = words[words.index("--not-run") + 1]
        assert reason.startswith("raf_db=raf_db is licence-gated") and "my sources/raf_db" in reason, reason


def test_real_generate_with_space_in_path(tmp_path):
    """One cheap rule really runs with a path holding a space: its output lands in that folder and no
    stray file appears (the bug: `> {log}` split at the space)."""
    overlay = tmp_path / "space.yaml"
    overlay.write_text(yaml.safe_dump({"paths": {"raw": "raw data", "results": "my results"}}))
    before = set(os.listdir(tmp_path))
    proc = run_snakemake(tmp_path, "--cores", "1", "raw data/synth_pose", configfiles=TINY + [str(overlay)])
    assert proc.returncode == 0, proc.stderr[-5000:]
    assert (tmp_path / "raw data" / "synth_pose").is_dir()
    assert (tmp_path / "my results" / "logs" / "generate" / "synth_pose.log").is_file()
    new = set(os.listdir(tmp_path)) - before - {".snakemake"}
    assert new == {"raw data", "my results"}, new


@pytest.mark.parametrize("value", ["a$(touch x)", "a`id`", "a;b", "a|b", "a&b", "a<b", "a>b", "a\nb", "a\x00b",
                                   "data/raw\n"])
def test_schema_and_check_refuse_shell_syntax_in_paths(value):
    cfg = {"paths": {"raw": value, "aligned": "a", "results": "r", "sources": "s"}}
    with pytest.raises(ConfigError, match=r"paths\.raw.*shell syntax"):
        check_config_values(cfg)
    with pytest.raises(ConfigError, match=r"paths\.raw"):  # the schema alone says it too
        validate_config(cfg, partial=True)


def test_schema_accepts_ordinary_odd_paths():
    for value in ("data/raw x", "it's (1)", "/abs/path-with_dashes.v2", "ü/ñ"):
        cfg = {"paths": {"raw": value, "aligned": "a", "results": "r", "sources": "s"}}
        check_config_values(cfg)
        validate_config(cfg, partial=True)


def test_yte_config_file_is_refused(tmp_path, capsys):
    f = tmp_path / "yte.yaml"
    f.write_text("__use_yte__: true\nseed: ?1+1\n")
    with pytest.raises(ConfigError, match="__use_yte__"):
        cli.load_config([f])
    assert cli.main(["validate-config", "--config", str(f)]) == 2
    assert "YTE" in capsys.readouterr().err


# --- D5: NaN and infinities -----------------------------------------------------------------------

def test_premise_nan_passes_yaml_json_and_jsonschema():
    assert yaml.safe_load("a: .nan")["a"] != yaml.safe_load("a: .nan")["a"]
    assert json.loads('{"a": Infinity}')["a"] == float("inf")
    jsonschema.validate(float("nan"), {"type": "number", "minimum": 0})  # no error: why check_config_values exists


@pytest.mark.parametrize("yaml_text, key", [
    ("seed: .nan\n", "seed"),
    ("pretrain:\n  optim:\n    lr: .inf\n", "pretrain.optim.lr"),
    ("tasks:\n  expression:\n    train:\n      weight_decay_grid: [1.0e-2, -.inf]\n",
     "tasks.expression.train.weight_decay_grid[1]"),
    ("tasks:\n  expression:\n    train:\n      weight_decay_grid: [.NaN]\n", "tasks.expression.train.weight_decay_grid[0]"),
])
def test_non_finite_refused_naming_the_key(tmp_path, yaml_text, key):
    f = tmp_path / "bad.yaml"
    f.write_text(yaml_text)
    with pytest.raises(ConfigError) as ei:
        cli.load_config([ROOT / "config" / "config.yaml", f])
    assert f"config error at {key}:" in str(ei.value) and "finite" in str(ei.value)


def test_non_finite_in_params_json_refused():
    with pytest.raises(ConfigError, match=r"probe\.x\[2\].*finite"):
        cli.load_config(params='{"probe": {"x": [1, 2, NaN]}}')


def test_set_overrides_get_the_same_checks():
    """``--set KEY=VALUE`` (pclbench.core.overrides) goes through the checks a config file gets: NaN in a
    list, shell syntax in paths.*, and a YTE switch (not a key of the config) are refused."""
    with pytest.raises(ConfigError, match=r"tasks\.expression\.train\.weight_decay_grid\[1\].*finite"):
        cli.load_config(sets=["tasks.expression.train.weight_decay_grid=[0, .nan]"])
    with pytest.raises(ConfigError, match=r"config error at paths\.raw: .*shell syntax"):
        cli.load_config(sets=["paths.raw=data/`id`"])
    with pytest.raises(ConfigError, match=r"unknown key __use_yte__"):
        cli.load_config(sets=["__use_yte__=true"])


def test_dry_run_refuses_nan_weight_decay(tmp_path):
    bad = tmp_path / "nan.yaml"
    bad.write_text("tasks:\n  expression:\n    train:\n      weight_decay_grid: [.nan]\n")
    proc = run_snakemake(tmp_path, "-n", "--cores", "1", configfiles=TINY + [str(bad)])
    assert proc.returncode != 0
    assert "tasks.expression.train.weight_decay_grid[0]" in proc.stdout + proc.stderr


# --- D6: a refused pickle is a one-line message naming the global -----------------------------------

class _Evil:
    """Pickles as ``os.system('touch <marker>')``: must never run."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture
def evil_file(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "best.pth"
    torch.save({"epoch": 1, "state_dict": {"module.encoder.x": _Evil(marker)}}, path)
    return path, marker


def test_import_official_names_blocked_global(evil_file, tmp_path, capsys):
    path, marker = evil_file
    with pytest.raises(CheckpointError) as ei:
        import_official(path, tmp_path / "out.pt", {"model": {}})
    msg = str(ei.value)
    assert "'posix.system'" in msg or "'os.system'" in msg, msg
    assert "\n" not in msg and "weights_only=False" not in msg
    rc = cli.main(["import-official", str(path), str(tmp_path / "out.pt"),
                   "--config", str(ROOT / "config" / "config.yaml")])
    err = capsys.readouterr().err
    assert rc == 1 and "Traceback" not in err and "system" in err, err
    assert not marker.exists() and not (tmp_path / "out.pt").exists()


def test_not_allowed_global_named(tmp_path):
    import fractions

    path = tmp_path / "frac.pt"
    torch.save({"a": fractions.Fraction(1, 3)}, path)  # not allow-listed, module not blocked
    with pytest.raises(CheckpointError, match=r"references the global 'fractions\.Fraction'") as ei:
        load_checkpoint(path)
    assert "\n" not in str(ei.value)


def test_non_torch_file_one_line(tmp_path):
    path = tmp_path / "junk.pt"
    path.write_bytes(b"\x80\x02junk that is not a pickle")
    with pytest.raises(CheckpointError, match=r"junk\.pt is not a pclbench checkpoint: torch\.load") as ei:
        load_checkpoint(path)
    assert "\n" not in str(ei.value) and "Weights only load failed" not in str(ei.value)


def test_load_checkpoint_names_blocked_global(evil_file):
    path, marker = evil_file
    for load in (load_checkpoint, load_encoder):
        with pytest.raises(CheckpointError, match=r"is not a pclbench checkpoint: refused .*(posix|os)\.system"):
            load(path)
    assert not marker.exists()


# --- D7: an absurd encoder spec is refused before anything is built ----------------------------------

@pytest.mark.parametrize("width", [1, 3, 8, 64])
def test_param_count_closed_form_matches_module(width):
    enc = build_encoder("facecycle", width=width)
    assert facecycle_param_count(width) == sum(p.numel() for p in enc.parameters())


def test_param_count_paper_width():
    # docs/method.md §1.7: trunk 1,879,424 + two heads of 295,168
    assert facecycle_param_count(64) == 1_879_424 + 2 * 295_168


def _spec_checkpoint(tmp_path, spec):
    path = tmp_path / "ck.pt"
    save_checkpoint(path, {"format": FORMAT, "method": "pcl", "encoder": spec, "encoder_state": {},
                           "model": {}, "optimizer": None, "scheduler": None, "scaler": None, "extra": {},
                           "rng": {}, "epoch": 0, "iteration": 0, "finished": True, "config": {}})
    return path


def test_huge_width_refused_before_building(tmp_path, monkeypatch):
    path = _spec_checkpoint(tmp_path, {"name": "facecycle", "kwargs": {"width": 100000}})

    def no_alloc(*a, **k):  # nothing may be built for a refused spec
        raise AssertionError("an encoder was built")

    import pclbench.models as models

    monkeypatch.setattr(models, "build_encoder", no_alloc)
    with pytest.raises(CheckpointError, match=r"width 100000 .*GiB.*MAX_ENCODER_PARAM_BYTES"):
        load_encoder(path)
    assert 4 * facecycle_param_count(100000) > MAX_ENCODER_PARAM_BYTES


def test_limit_also_guards_the_constructor():
    with pytest.raises(ValueError, match="width 100000"):
        build_encoder("facecycle", width=100000)


@pytest.mark.parametrize("spec, match", [
    ({"name": "facecycle", "kwargs": {"width": 8, "evil": 1}}, "evil"),
    ({"name": "nosuch", "kwargs": {"width": 8}}, "not a registered encoder"),
    ({"name": "facecycle", "kwargs": {"width": -3}}, "positive integer"),
    ({"name": "facecycle", "kwargs": []}, "must be a spec"),
    ({"name": "resnet50", "kwargs": {"width": 100000}}, "fixed base width 64"),
])
def test_bad_specs_refused(tmp_path, spec, match):
    with pytest.raises(CheckpointError, match=match):
        load_encoder(_spec_checkpoint(tmp_path, spec))


def test_cli_prints_checkpoint_error_without_traceback(tmp_path, capsys):
    path = _spec_checkpoint(tmp_path, {"name": "facecycle", "kwargs": {"width": 100000}})
    data = tmp_path / "data"
    data.mkdir()
    rc = cli.main(["extract", "--checkpoint", str(path), "--data", str(data), "--out", str(tmp_path / "f.npz"),
                   "--config", str(ROOT / "config" / "config.yaml")])
    err = capsys.readouterr().err
    assert rc == 1 and "width 100000" in err and "Traceback" not in err, err


def test_schema_premise_paths_section_is_the_one_checked():
    assert set(load_schema()["properties"]["paths"]["properties"]) == {"raw", "aligned", "results", "sources", "logs",
                                                                       "receipts"}
