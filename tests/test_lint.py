"""`snakemake --lint`, `snakefmt --check`, and the Snakemake workflow catalog's files.

Sources:

- What each lint checks: Snakemake 9.27.1, snakemake/linting/rules.py (RuleLinter) and
  snakemake/linting/snakefiles.py (SnakefileLinter). The linter has no switch to silence one lint in
  the workflow, so the lints we accept on purpose are listed here (ACCEPTED), each with its reason. The
  test fails on any other lint, and on an ACCEPTED entry that no lint matches any more.
- `snakemake --lint json` prints text in 9.27.1 (snakemake/cli.py calls ``workflow_api.lint()`` without
  its ``json`` argument), so the JSON comes from the API: ``WorkflowApi.lint(json=True)``
  (snakemake/api.py), which prints ``{"snakefiles": [...], "rules": [...]}``.
- The catalog (snakemake/snakemake-workflow-catalog): source/docs/about/adding_workflows.md lists
  config/README.md and .snakemake-workflow-catalog.yml with its keys; scripts/generate-catalog.py runs
  `snakemake --lint` and `snakefmt --check` on the Snakefile and rules/*.smk, and reads
  usage.mandatory-flags, usage.software-stack-deployment and usage.report.
- snakefmt's options: its README, "Configuration" ([tool.snakefmt] in pyproject.toml).
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
RULE_FILES = sorted((REPO / "workflow" / "rules").glob("*.smk"))

# Prints the workflow's lints as JSON (argv: snakefile, workdir, configfiles...). A subprocess: Snakemake
# keeps global state between workflows in one interpreter.
LINT_SCRIPT = """
import sys
from pathlib import Path
from snakemake.api import SnakemakeApi
from snakemake.settings.types import ConfigSettings, OutputSettings, ResourceSettings
from snakemake.linting.snakefiles import SnakefileLinter
# 9.27.1 puts the snakefile's source-file object into the JSON, which json.dumps refuses: use its path
SnakefileLinter.item_desc_json = lambda self, snakefile: {"snakefile": str(snakefile)}
snakefile, workdir, *configfiles = sys.argv[1:]
with SnakemakeApi(OutputSettings()) as api:
    api.workflow(
        resource_settings=ResourceSettings(cores=1),
        config_settings=ConfigSettings(configfiles=[Path(c) for c in configfiles]),
        snakefile=Path(snakefile),
        workdir=Path(workdir),
    ).lint(json=True)
"""

# (lint title, rules it may name (None: any rule), why it stays). Titles as snakemake/linting/rules.py
# words them.
ACCEPTED = [
    (
        "Specify a conda environment or container for each rule.",
        None,
        "The software of every job is one pinned pip environment (requirements.txt + constraints.txt, "
        "`make venv`; config/README.md, 'Software'), not a per-rule environment: the workflow imports "
        "pclbench while Snakemake parses it (workflow/rules/common.smk), so the interpreter running "
        "Snakemake must have the package anyway, and each job runs that same interpreter (sys.executable), "
        "which a conda environment activated by `--sdm conda` would not replace. And an environment file that "
        "pip-installs requirements.txt would be fragile: Snakemake copies the file to "
        ".snakemake/conda/<hash>.yaml before `conda env create` (snakemake/deployment/conda.py, Env.create), "
        "and conda runs pip in that file's folder (conda/conda, conda/env/installers/pip.py: pip_workdir), "
        "so a relative `-r ../../requirements.txt` is read from there; and the environment's hash covers "
        "that file (with its pin file and post-deploy script; Env._get_hash), not the files it names, so a "
        "changed pin would not rebuild it.",
    ),
    (
        "Shell command directly uses variable PCLBENCH from outside of the rule",
        None,
        "The interpreter is the software, not a parameter of a result: as a param it would be recorded "
        "with every output (Snakemake's params rerun trigger), so an environment at another path would "
        "re-run every job (workflow/rules/common.smk).",
    ),
    (
        "Shell command directly uses variable PCLBENCH_LAUNCH from outside of the rule",
        {"pretrain"},
        "As PCLBENCH: the interpreter, running the launcher (pclbench.pretrain.launch).",
    ),
    (
        "Shell command directly uses variable DOWNLOAD_JSON from outside of the rule",
        {"acquire"},
        "How to transfer (retries, timeouts, lock file, limits), not what: kept out of params so that "
        "changing it does not re-run acquire and every parser after it (workflow/rules/data.smk).",
    ),
    (
        "Shell command directly uses variable SOURCES from outside of the rule",
        {"acquire", "prepare"},
        "The folder of the real datasets (paths.sources), which may hold a user's licence-gated files on "
        "read-only storage: not a declared file (Snakemake deletes a rule's outputs before it re-runs, "
        "data.smk's acquire docstring) and not a param (moving the folder changes no data; the receipt "
        "records each file's size and digest).",
    ),
]

# Config overlays linted: rules that exist only under some settings are linted too (align_part /
# align_merge with align.parts > 1).
LINT_CONFIGS = {
    "default": [],
    "tiny_parts2": ["config/tiny.yaml", "PARTS2"],
}


def run_lint(tmp_path: Path, overlays: list[str], snakefile: Path = REPO / "Snakefile") -> dict:
    configfiles = [str(REPO / "config" / "config.yaml")] if snakefile == REPO / "Snakefile" else []
    for o in overlays:
        if o == "PARTS2":
            p = tmp_path / "parts2.yaml"
            p.write_text("align:\n  parts: 2\n")
            configfiles.append(str(p))
        else:
            configfiles.append(str(REPO / o))
    workdir = tmp_path / "wd"
    workdir.mkdir()
    proc = subprocess.run([sys.executable, "-c", LINT_SCRIPT, str(snakefile), str(workdir), *configfiles],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout[proc.stdout.index("{"):])


def unaccepted(lints: dict) -> list[str]:
    problems = [f"{Path(s['for']['snakefile']).name}: {lint['title']}" for s in lints["snakefiles"]
                for lint in s["lints"]]
    for r in lints["rules"]:
        rule = r["for"]["rule"]
        for lint in r["lints"]:
            if not any(lint["title"] == title and (rules is None or rule in rules) for title, rules, _ in ACCEPTED):
                problems.append(f"rule {rule} ({Path(r['for']['snakefile']).name}): {lint['title']}")
    return problems


@pytest.fixture(scope="module")
def lints(tmp_path_factory) -> dict[str, dict]:
    return {name: run_lint(tmp_path_factory.mktemp(name), overlays) for name, overlays in LINT_CONFIGS.items()}


@pytest.mark.parametrize("config_name", sorted(LINT_CONFIGS))
def test_lint_reports_only_accepted_lints(lints, config_name):
    problems = unaccepted(lints[config_name])
    assert not problems, ("`snakemake --lint` reports lints that tests/test_lint.py does not accept; fix them "
                          "(or, if one must stay, add it to ACCEPTED with the reason):\n  " + "\n  ".join(problems))


def test_every_accepted_lint_still_occurs(lints):
    """An ACCEPTED entry that matches nothing is stale: the lint it excused has been fixed, so remove it."""
    seen = {(lint["title"], r["for"]["rule"]) for result in lints.values() for r in result["rules"]
            for lint in r["lints"]}
    for title, rules, _ in ACCEPTED:
        hits = {rule for t, rule in seen if t == title}
        assert hits, f"no rule is linted with {title!r} any more: remove it from ACCEPTED"
        if rules is not None:
            assert hits == rules, (title, hits, rules)


def test_the_linted_rules_include_the_scatter_gather_ones(lints):
    """The align.parts > 1 overlay really switches rules (else it lints nothing new)."""
    rules = {r["for"]["rule"] for r in lints["tiny_parts2"]["rules"]}
    assert {"align_part", "align_merge"} <= rules
    assert "align_part" not in {r["for"]["rule"] for r in lints["default"]["rules"]}


def test_lint_harness_reports_what_it_should(tmp_path):
    """The harness sees lints: a workflow with each kind we fixed is reported, and not accepted."""
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "a.smk").write_text(
        'OUT = "out"\n\n'
        "def name(wildcards):\n    return 'x'\n\n"
        "rule a:\n"
        '    output: OUT + "/sub/a.txt"\n'
        "    params: outdir=OUT\n"
        '    log: "a.log"\n'
        '    shell: "touch {output:q} --root {OUT:q} > {log:q}"\n'
    )
    snakefile = tmp_path / "Snakefile"
    snakefile.write_text('include: "rules/a.smk"\n')
    problems = "\n".join(unaccepted(run_lint(tmp_path, [], snakefile=snakefile)))
    assert "Mixed rules and functions in same snakefile." in problems
    assert "Path composition with '+'" in problems
    assert "Shell command directly uses variable OUT from outside of the rule" in problems
    assert "Param outdir is a prefix of input or output file but hardcoded" in problems


def test_rule_files_are_formatted_with_snakefmt():
    """`snakefmt --check` (settings: [tool.snakefmt] in pyproject.toml), as the catalog runs it."""
    proc = subprocess.run([sys.executable, "-m", "snakefmt", "--check", "Snakefile", *map(str, RULE_FILES)],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, ("not formatted; run `.venv/bin/snakefmt Snakefile workflow/rules/` and look at "
                                  "the diff:\n" + proc.stdout[-3000:] + proc.stderr[-3000:])


def test_snakefmt_is_pinned_with_what_it_brings():
    reqs = (REPO / "requirements.txt").read_text()
    cons = (REPO / "constraints.txt").read_text()
    pin = re.search(r"^snakefmt==(\S+)$", reqs, re.M)
    assert pin and f"snakefmt=={pin.group(1)}" in cons
    for dep in ("black", "shfmt-py", "pytokens", "mypy_extensions", "click"):
        assert re.search(rf"^{re.escape(dep)}==\S+$", cons, re.M), dep


def test_rule_files_define_no_functions():
    """The linter's own check (lint_mixed_func_and_rules: regexes 'rule .+?:' and 'def .+?:'), read directly,
    so the test names the file: functions go to common.smk, which has no rules."""
    for path in [REPO / "Snakefile", *RULE_FILES]:
        text = path.read_text()
        has_rule, has_def = re.search("rule .+?:", text), re.search("def .+?:", text)
        assert not (has_rule and has_def), f"{path.name} mixes rules ({has_rule.group()}) and functions ({has_def.group()})"


# ----------------------------------------------------------------------------------------------------
# the catalog's files


def _config() -> dict:
    return yaml.safe_load((REPO / "config" / "config.yaml").read_text())


def _readme() -> str:
    return (REPO / "config" / "README.md").read_text()


def test_config_readme_documents_exactly_the_config_sections():
    documented = re.findall(r"^\| `([a-z_0-9]+)` \|", _readme(), re.M)
    assert documented, "no section table found in config/README.md"
    assert len(documented) == len(set(documented))
    assert documented == list(_config()), "config/README.md's section table must list config.yaml's sections, in order"


def test_config_readme_names_real_keys_and_files():
    config, text = _config(), _readme()
    dotted = {k for k in re.findall(r"`([a-z_0-9]+(?:\.[a-z_0-9]+)+)(?::[^`]*)?`", text)
              if not re.search(r"\.(txt|yaml|yml|md|py)$", k)}  # config keys, not file names
    assert {"paths.sources", "workflow.missing_data", "video.exclusion_file"} <= dotted
    for key in dotted:
        node = config
        for part in key.split("."):
            assert isinstance(node, dict) and part in node, f"config/README.md names {key}, which config.yaml lacks"
            node = node[part]
    paths_row = re.search(r"^\| `paths` \| (.*) \|$", text, re.M).group(1)
    assert set(re.findall(r"`([a-z_]+)`", paths_row)) == set(config["paths"]), paths_row
    for name in re.findall(r"`(config/[^`\s]+|workflow/[^`\s]+|tests/[^`\s]+|requirements\.txt|constraints\.txt)`",
                           text):
        assert (REPO / name).exists(), f"config/README.md names {name}, which does not exist"
    assert config["video"]["exclusion_file"] == "config/voxceleb_exclusion.txt"
    assert config["workflow"]["missing_data"] in ("skip", "fail") and "`workflow.missing_data: skip`" in text


def test_catalog_settings_match_the_workflow(lints):
    settings = yaml.safe_load((REPO / ".snakemake-workflow-catalog.yml").read_text())
    assert set(settings) == {"usage"}
    usage = settings["usage"]
    assert set(usage) <= {"mandatory-flags", "software-stack-deployment", "report"}
    flags = usage["mandatory-flags"]
    assert set(flags) == {"desc", "flags"} and isinstance(flags["desc"], str) and flags["flags"] == []
    deployment = usage["software-stack-deployment"]
    assert set(deployment) == {"conda", "apptainer", "apptainer+conda"}
    # no rule declares a conda environment or container, and every rule is linted for it
    rules = lints["default"]["rules"]
    untooled = {r["for"]["rule"] for r in rules
                for lint in r["lints"] if lint["title"] == "Specify a conda environment or container for each rule."}
    assert untooled == {r["for"]["rule"] for r in rules} and untooled
    assert deployment == {"conda": False, "apptainer": False, "apptainer+conda": False}
    # report: true needs a global report directive whose file exists
    report = re.findall(r'^report: "([^"]+)"$', (REPO / "workflow" / "rules" / "report.smk").read_text(), re.M)
    assert usage["report"] is True and report
    assert (REPO / "workflow" / "rules" / report[0]).resolve().is_file()
