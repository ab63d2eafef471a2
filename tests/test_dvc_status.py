"""What `dvc status` / `dvc repro` / `dvc exp run -S` re-run with the generated dvc.yaml (DVC's own
decisions, real `dvc`), with a stand-in `snakemake` on PATH that writes each target with fresh content
and logs its command line, so a full pipeline "runs" in seconds.

DVC behaviour relied on: a stage is re-run when a dep or param it lists changed, and then so is every
stage whose deps are its outputs (dvc.org/doc/command-reference/status, .../repro);
`dvc exp run -S [<file>:]<key>=<value>` edits the params file and reproduces
(dvc.org/doc/command-reference/exp/run). The stand-in always writes new bytes, as a real re-run of
training would, so downstream stages re-run too: the sets below are what DVC decides from dvc.yaml.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from pclbench.core import dvc_export

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="dvc experiments need git")

FAKE_SNAKEMAKE = textwrap.dedent('''\
    import json, os, sys, uuid
    args = sys.argv[1:]
    n = next((i for i, a in enumerate(args) if a.startswith("--")), len(args))
    targets, options = args[:n], args[n:]
    with open(os.environ["FAKE_SNAKEMAKE_LOG"], "a") as fh:
        fh.write(json.dumps({"targets": targets, "options": options}) + "\\n")
    nonce = uuid.uuid4().hex
    for t in targets:
        if os.path.splitext(t)[1] == "":                     # directory outputs (datasets, shards)
            os.makedirs(t, exist_ok=True)
            with open(os.path.join(t, "stub.txt"), "w") as fh:
                fh.write(nonce)
            continue
        os.makedirs(os.path.dirname(t) or ".", exist_ok=True)
        with open(t, "w") as fh:
            if t.endswith("metrics.json"):
                fh.write(json.dumps({"pcl/synth_au/f1": 0.5, "random/synth_au/f1": 0.25}))
            elif t.endswith("metrics.csv"):
                fh.write("iteration,loss_face\\n1,2.0\\n2,1.5\\n")
            else:
                fh.write(nonce)
''')


def copy_workflow(repo_root: Path, dst: Path) -> None:
    shutil.copy(repo_root / "Snakefile", dst / "Snakefile")
    for sub in ("workflow", "config"):
        shutil.copytree(repo_root / sub, dst / sub)
    shutil.copytree(repo_root / "src" / "pclbench", dst / "src" / "pclbench",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(repo_root / "dvc.yaml", dst / "dvc.yaml")


class Repo:
    def __init__(self, root: Path, bin_dir: Path):
        self.root, self.log = root, root.parent / "snakemake.log"
        self.env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
                    "FAKE_SNAKEMAKE_LOG": str(self.log), "DVC_NO_ANALYTICS": "1",
                    "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
                    "GIT_COMMITTER_EMAIL": "t@t"}

    def run(self, *cmd: str) -> str:
        proc = subprocess.run(list(cmd), cwd=self.root, env=self.env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, f"{' '.join(cmd)}: {proc.returncode}\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
        return proc.stdout

    def dvc(self, *args: str) -> str:
        return self.run(sys.executable, "-m", "dvc", *args)

    def commit(self, message: str) -> None:
        self.run("git", "add", "-A")
        self.run("git", "commit", "-qm", message)

    def ran(self) -> list[str]:
        """Stages the stand-in ran since the last call (by their targets), in order."""
        doc = yaml.safe_load((self.root / "dvc.yaml").read_text())
        owner = {o: name for name, st in doc["stages"].items() for o in st["outs"] + st.get("metrics", [])}
        lines = self.log.read_text().splitlines() if self.log.exists() else []
        self.log.write_text("")
        return [owner[json.loads(line)["targets"][0]] for line in lines]

    def stages(self) -> dict:
        return yaml.safe_load((self.root / "dvc.yaml").read_text())["stages"]


def changed_stages(status_json: str) -> set[str]:
    return {name.rsplit(":", 1)[-1] for name in json.loads(status_json or "{}")}


@pytest.fixture(scope="module")
def repo(repo_root, tmp_path_factory) -> Repo:
    """The committed dvc.yaml, reproduced once and committed with its dvc.lock (a finished run)."""
    base = tmp_path_factory.mktemp("dvc_status")
    bin_dir = base / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "snakemake"
    fake.write_text(f"#!{sys.executable}\n{FAKE_SNAKEMAKE}")
    fake.chmod(0o755)
    r = Repo(base / "repo", bin_dir)
    r.root.mkdir()
    copy_workflow(repo_root, r.root)
    r.run("git", "init", "-q")
    r.dvc("init", "-q")
    r.commit("workflow")
    r.dvc("repro")
    assert sorted(r.ran()) == sorted(r.stages()), "the first repro runs every stage once"
    r.commit("finished run")
    assert changed_stages(r.dvc("status", "--json")) == set()
    return r


def test_tables_edit_reruns_only_the_report(repo):
    tables = repo.root / "src" / "pclbench" / "report" / "tables.py"
    original = tables.read_text()
    tables.write_text(original + "\n# a table footnote changed\n")
    try:
        status = repo.dvc("status")
        changed = changed_stages(repo.dvc("status", "--json"))
        # the stages that import pclbench.report.tables (the tables and the bar-chart figure): `report`
        expected = {name for name, st in repo.stages().items() if "src/pclbench/report/tables.py" in st["deps"]}
        assert changed == expected == {"report"}, status
        assert "modified:" in status and "src/pclbench/report/tables.py" in status, status
        (repo.root.parent / "status_after_tables_edit.txt").write_text(status)
        repo.dvc("repro")
        assert repo.ran() == ["report"]
    finally:
        tables.write_text(original)
    # back to the committed code: DVC's run-cache restores the report it made with it, nothing runs
    repo.dvc("repro")
    assert repo.ran() == []
    assert changed_stages(repo.dvc("status", "--json")) == set()


def test_alignment_edit_reruns_alignment_and_what_follows(repo):
    """The counter-check: a module the align stages run does re-run them, and their consumers."""
    align = repo.root / "src" / "pclbench" / "align" / "aligner.py"
    original = align.read_text()
    align.write_text(original + "\n# changed\n")
    try:
        changed = changed_stages(repo.dvc("status", "--json"))
        assert {s for s in repo.stages() if s.startswith("align-")} <= changed
        assert not {s for s in changed if s.startswith(("pretrain-", "report", "evaluate-"))}
    finally:
        align.write_text(original)
    assert changed_stages(repo.dvc("status", "--json")) == set()


def downstream(stages: dict, start: set[str]) -> set[str]:
    """``start`` and every stage that (transitively) depends on one of their outputs."""
    out = set(start)
    grew = True
    while grew:
        made = {o for s in out for o in stages[s]["outs"] + stages[s].get("metrics", [])}
        more = {n for n, st in stages.items() if any(d in made or any(d.startswith(m + "/") for m in made)
                                                    for d in st["deps"])}
        grew = not more <= out
        out |= more
    return out


def test_exp_run_set_param_reruns_what_the_key_affects(repo):
    stages = repo.stages()
    readers = {n for n, st in stages.items()
               if any("pretrain" in e.get("config/config.yaml", []) for e in st.get("params", []))}
    assert readers == {n for n in stages if n.startswith("pretrain-")}
    repo.dvc("exp", "run", "-S", "config/config.yaml:pretrain.lr=0.01")
    ran = set(repo.ran())
    assert ran == downstream(stages, readers)
    assert not ran & {n for n in stages if n.startswith(("generate", "align-", "contact_sheets"))}
    assert yaml.safe_load((repo.root / "config" / "config.yaml").read_text())["pretrain"]["lr"] == 0.01


def test_metrics_show_lists_the_headline_numbers(repo):
    shown = json.loads(repo.dvc("metrics", "show", "--json"))
    data = shown[""]["data"]["results/metrics.json"]["data"]
    assert data == json.loads((repo.root / "results" / "metrics.json").read_text())


def test_override_file_reaches_the_stages_and_exp_run(repo):
    """dvc.yaml made with --configfile config/tiny.yaml: the commands pass it to Snakemake, the
    params list the keys tiny.yaml sets, and -S on that file re-runs the stages reading the key."""
    repo.run("git", "checkout", "-q", "--", ".")  # the previous test's params edit
    (repo.root / "dvc.yaml").write_text(dvc_export.render([repo.root / "config" / "tiny.yaml"], workdir=repo.root))
    stages = repo.stages()
    for name, st in stages.items():
        assert "--configfile config/tiny.yaml" in st["cmd"], name
    tiny = yaml.safe_load((repo.root / "config" / "tiny.yaml").read_text())
    pre = stages["pretrain-pcl"]["params"]
    assert {"config/tiny.yaml": sorted(k for k in ("model", "pcl", "pretrain", "views") if k in tiny)} in pre
    repo.dvc("repro")  # every command changed
    assert sorted(repo.ran()) == sorted(stages)
    repo.commit("tiny")
    repo.dvc("exp", "run", "-S", "config/tiny.yaml:pretrain.epochs=3")
    log = [json.loads(line) for line in repo.log.read_text().splitlines()]
    ran = set(repo.ran())
    assert {n for n in stages if n.startswith("pretrain-")} <= ran
    assert not ran & {n for n in stages if n.startswith(("generate", "align-", "contact_sheets"))}
    assert all(e["options"][e["options"].index("--configfile") + 1] == "config/tiny.yaml" for e in log)

