"""Comments and docs cite things that exist: repository paths that are in the repository, no citations
of this project's own issue numbers (an issue tracker the reader of the code does not have)."""
from __future__ import annotations

import glob
import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TREES = ["src", "workflow", "config", "docs", "README.md", "benchmarks", "profiles", "Snakefile", "Makefile", "tests"]
PATH = re.compile(r"(?<![\w./-])((?:config|tests|workflow|docs|benchmarks|profiles|src)/[\w./*-]+\."
                  r"(?:yaml|py|smk|md|txt|sh|rst))")
# Cited on purpose although not in a clone: written by the workflow, or another repository's path
# (named next to its repository where it is cited).
NOT_OURS = {"config/datasets.lock.yaml",                  # written by the first download (download.lock_file)
            "src/util/visualize_landmarks.py",            # AffectNet's released tools
            "src/ActionUnit_Labels/SN013/SN013_au26.txt"}  # a DISFA release path in a fixture
# "issue 12" / "issue #3"; one with "owner/repo" just before it is another repository's (checked below).
OWN_ISSUE = re.compile(r"\bissues? #?\d+", re.I)


def _texts():
    out = subprocess.run(["git", "ls-files", *TREES], cwd=REPO, capture_output=True, text=True, check=True)
    for rel in out.stdout.split():
        p = REPO / rel
        if p.suffix in (".png", ".jpg", ".pt", ".npy", ".gz", ".zip") or not p.is_file():
            continue
        try:
            yield rel, p.read_text()
        except UnicodeDecodeError:
            continue


def test_cited_repository_paths_exist():
    missing = sorted({(rel, m.group(1)) for rel, text in _texts() for m in PATH.finditer(text)
                      if m.group(1) not in NOT_OURS and not glob.glob(str(REPO / m.group(1)))})
    assert not missing, missing


def test_no_citations_of_this_projects_issue_numbers():
    me = Path(__file__).relative_to(REPO).as_posix()
    hits = []
    for rel, text in _texts():
        if rel == me:
            continue
        for m in OWN_ISSUE.finditer(text):
            line = text.count("\n", 0, m.start()) + 1
            before = text[max(0, m.start() - 80):m.start()]
            # another repository's issue: "owner/repo issue N", "deep-head-pose issue #60", "3DDFA_V2 issue"
            if re.search(r"(?:[\w.-]+/[\w.-]*\w[\s(]*|[A-Za-z][\w-]*[-_\d][\w-]*[ \t(]*)$", before):
                continue
            hits.append(f"{rel}:{line}: ...{text[max(0, m.start() - 40):m.end()]!r}")
    assert not hits, "\n".join(hits)
