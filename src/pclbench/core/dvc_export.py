"""Generate ``dvc.yaml`` from the Snakemake workflow, so the two can never silently disagree.

The Snakefile is the single source of truth of the DAG. Every Snakemake job (except ``all``) belongs
to exactly one DVC stage; :data:`GROUP_BY` maps a rule to its stage and the wildcards that name it
(``align-synth_pose``, ``pretrain-pcl``, ``evaluate-pcl`` = extract + probe of pcl, ``report``), and
a stage's command asks Snakemake for exactly its jobs' outputs with its rules only. ``dvc repro`` and
``snakemake`` therefore run the same commands on the same files; ``tests/test_dvc.py`` regenerates this
file and fails when the committed one is stale, and ``tests/test_dvc_dag.py`` checks that DVC's own
graph (``dvc dag --dot``) is Snakemake's job graph with the jobs of each stage merged.

A stage's fields, and the DVC behaviour each relies on:

* ``deps``: the jobs' inputs (outputs of the same stage left out) plus the code the stage runs
  (:func:`code_deps`): the rule's ``.smk`` file, ``workflow/rules/common.smk`` (the command prefix and
  the ``stage_params`` that builds every rule's arguments) and the import closure of the ``pclbench``
  subcommand the rule's shell line calls. DVC re-runs a stage when a dep's hash changes and ``dvc
  status`` lists it with ``changed deps: modified: <path>`` (dvc.org/doc/command-reference/status);
  the Snakefile itself only includes the rule files and names the local rules, so it is no dep;
  ``dvc repro`` removes a stage's outputs before running it (dvc.org/doc/command-reference/repro,
  unless ``persist``), so a too-wide dep (formerly the whole ``src/pclbench`` for every stage) made a
  table edit redo alignment and pretraining.
* ``params``: ``- <file>: [keys]`` for ``config/config.yaml`` and each override file given with
  ``--configfile``, each file listing the keys of the stage's config sections that it holds (DVC
  params from a file other than ``params.yaml``: dvc.org/doc/command-reference/params and
  dvc.org/doc/user-guide/project-structure/dvcyaml-files#parameters). A key a file does not hold is not
  listed for it: DVC fails on a listed key missing from its file. The stage command passes the same
  ``--configfile`` list to Snakemake, so ``dvc exp run -S 'config/paper.yaml:pretrain.lr=3e-4'``
  (``-S [<filename>:]<param>=<value>``, dvc.org/doc/command-reference/exp/run) edits the file both
  tools read, and re-runs the stages listing that key and what is downstream of them. ``-S`` rewrites
  the file it edits in YAML 1.2 style (checked with dvc 3.67: flow lists become block lists, quotes
  go, so ``compile: "off"`` comes back as ``off``, which YAML 1.1 readers such as PyYAML take for
  ``false``); README "DVC" recommends varying keys of an override file. A missing key is refused
  ("Key ... is not in struct"; ``+key=value`` adds it, treeverse/vscode-dvc issue 5198).
* ``outs``: the jobs' outputs; ``results/metrics.json`` (flat ``method/benchmark/metric`` numbers)
  under ``metrics:`` instead (``dvc metrics show``). Every output stays cached, so ``dvc pull``
  restores it and Snakemake finds every output of a finished job in place.
* top-level ``plots:``: one plot, ``training_curves``, x = ``iteration``, y = each trained method's
  ``metrics.csv`` mapped to the loss column all of that method's runs log (:data:`COMPARED_LOSS`),
  so ``dvc plots show`` draws the methods' curves on one chart (top-level plot definitions with ``y``
  a mapping of files to fields: dvc.org/doc/user-guide/project-structure/dvcyaml-files#top-level-plot-definitions).
  A field missing from a file fails the whole plot (FieldNotFoundError, checked with dvc 3.67), hence
  a column every run of the method writes. ``random`` is not trained (empty ``metrics.csv``) and is
  left out.

Grouping (:data:`GROUP_BY`) keeps ``dvc dag`` readable: 15 nodes instead of 57 for the default
config, lines of about 300 characters instead of 2,862 (``dvc dag`` lays the graph out with
grandalf; every long edge, e.g. align -> evaluate, takes width). Jobs are grouped only where they
re-run together anyway or the work is cheap (see :data:`GROUP_BY`); the expensive chains (align per
dataset, pretrain per method) stay apart. ``--per-job`` gives one stage per Snakemake job. DVC's
``foreach``/``matrix`` would only shorten the YAML: expanded stages are still separate nodes of
``dvc dag`` (``build@a``, ``build@b``: dvc.org/doc/user-guide/project-structure/dvcyaml-files#foreach-stages,
checked with dvc 3.67).

Left out of the code deps on purpose: the config schemas (``workflow/schemas``, read through
:func:`pclbench.core.resources.resource_path`) only validate, they never change a value a stage computes with.
"""
from __future__ import annotations

import ast
import contextlib
import io
import json
import os
import re
import shlex
from pathlib import Path
from typing import Iterable, Sequence

import yaml

from pclbench.core.resources import REPO_ROOT
from pclbench.core.io import atomic_write_text
from pclbench.core.stages import stage_config

HEADER = (
    "# GENERATED by `pclbench dvc-yaml` (make dvc-yaml) from the Snakemake workflow: do not edit.\n"
    "# Each stage runs Snakemake on its jobs' outputs with its rules only (pclbench/core/dvc_export.py).\n"
    "# tests/test_dvc.py fails when this file no longer matches the workflow.\n"
)
# The header's last line records the options the file was made with (the staleness test re-reads it).
OPTIONS_LINE = "# pclbench dvc-yaml options:"
DEFAULT_CONFIG = "config/config.yaml"
PACKAGE_DIR = "src/pclbench"

# rule -> (stage, wildcards that name it): the jobs with the same stage and wildcard values form one
# stage. Rules not listed keep one stage per job, named after the rule and every wildcard.
# generate, contact_sheets: one stage each (SynthFaces datasets share the `synth` params: they re-run
# together anyway). align: one stage per dataset (its splits share the raw folder and the params), so a
# new or changed dataset never re-aligns the others (the pretraining set takes hours on real data).
# pretrain: one stage per method. evaluate-<method>: that method's feature extraction and probes (a
# new checkpoint re-runs both anyway; a probe setting also re-extracts that method's features, the
# price of a DAG that fits a screen: extract and probe apart add 3 nodes and 30 long edges).
# report: the tables, metrics.json and every figure (seconds of CPU).
GROUP_BY: dict[str, tuple[str, tuple[str, ...]]] = {
    "generate": ("generate", ()),
    "contact_sheet": ("contact_sheets", ()),
    "align": ("align", ("dataset",)),
    "pretrain": ("pretrain", ("method",)),
    "extract": ("evaluate", ("method",)),
    "probe": ("evaluate", ("method",)),
    "tables": ("report", ()),
    "figure_bars": ("report", ()),
    "figure_curves": ("report", ()),
    "figure_swap_grid": ("report", ()),
    "figure_embedding": ("report", ()),
}

# Registered method -> the metrics.csv column (pclbench.pretrain.trainer writes one per logged value) drawn in the
# training-curves comparison: a loss every run of the method logs, whatever its ablation switches.
# PCL: the face-aware contrastive step runs in every variant (pclbench/pretrain/methods/pcl.py train_iteration;
# the PDD and pose steps can be switched off). The baselines log one loss each.
COMPARED_LOSS = {"pcl": "loss_face", "simclr": "loss_simclr", "moco": "loss_moco", "byol": "loss_byol"}
UNTRAINED = {"random"}  # evaluated at initialisation: metrics.csv is empty


def snakemake_jobs(configfiles: Sequence[str | Path] = (), workdir: Path = REPO_ROOT,
                   sets: Sequence[str] = ()) -> list[dict]:
    """Every job of the workflow's full DAG: rule, wildcards, inputs, outputs, config keys (DVC params:
    :func:`pclbench.core.stages.stage_config`, checked against the job's Snakemake params), the rule's
    shell template and file, and the jobs it depends on (Snakemake's own DAG edges). ``sets``: ``KEY=VALUE``
    overrides, as ``snakemake --config 'set=[...]'`` passes them (workflow/rules/common.smk)."""
    from snakemake.api import SnakemakeApi
    from snakemake.settings.enums import Quietness
    from snakemake.settings.types import ConfigSettings, DAGSettings, OutputSettings, ResourceSettings

    cwd = os.getcwd()
    configfiles = [Path(c).resolve() for c in configfiles]
    jobs = []
    try:
        with contextlib.redirect_stdout(io.StringIO()), \
                SnakemakeApi(OutputSettings(quiet={Quietness.ALL})) as api:
            wapi = api.workflow(
                resource_settings=ResourceSettings(cores=1),
                config_settings=ConfigSettings(configfiles=configfiles, config={"set": list(sets)} if sets else {}),
                snakefile=Path(workdir) / "Snakefile",
                workdir=Path(workdir),
            )
            wapi.dag(dag_settings=DAGSettings(forceall=True))
            wf = wapi._workflow
            # Same calls as Snakemake's own --d3dag (workflow.printd3dag); snakemake is pinned.
            wf._prepare_dag(forceall=True, ignore_incomplete=True, lock_warn_only=True, nolock=True)
            wf._build_dag()
            variants = wf.config.get("variants") or {}

            def key(job):
                return job.rule.name, tuple(sorted(str(f) for f in job.output))

            for job in wf.dag.jobs:
                if job.rule.name == "all":
                    continue
                wildcards = {k: str(v) for k, v in job.wildcards.items()}
                # The stage's keys come from their one declaration (pclbench.core.stages), which the
                # rule's params are built from too: a rule that passes anything else is an error here.
                cfg = json.loads(json.dumps(stage_config(wf.config, job.rule.name, **wildcards)))
                passed = json.loads(getattr(job.params, "cfg", None) or "{}")
                if passed != cfg:
                    raise ValueError(f"rule {job.rule.name} {wildcards}: its params pass the config keys "
                                     f"{param_keys(passed, wf.config)}, but pclbench.core.stages declares "
                                     f"{param_keys(cfg, wf.config)} (or other values)")
                entry = {
                    "rule": job.rule.name,
                    "wildcards": wildcards,
                    "input": sorted(str(f) for f in job.input),
                    "output": sorted(str(f) for f in job.output),
                    "sections": param_keys(cfg, wf.config),
                    "params": getattr(job.params, "cfg", None) or "",
                    "shell": job.rule.shellcmd or "",
                    "snakefile": os.path.relpath(job.rule.snakefile, workdir),
                    "upstream": sorted(key(d) for d in wf.dag.dependencies[job] if d.rule.name != "all"),
                }
                if "method" in wildcards:
                    m = wildcards["method"]
                    entry["base_method"] = variants[m]["method"] if m in variants else m
                jobs.append(entry)
    finally:
        os.chdir(cwd)
    return sorted(jobs, key=lambda j: (j["rule"], j["output"]))


def param_keys(selected: dict, config: dict) -> list[str]:
    """DVC param keys for the config a rule passes: whole sections, or ``section.entry`` subsets."""
    keys = []
    for section, value in selected.items():
        if value == config.get(section) or not isinstance(value, dict):
            keys.append(section)
        else:
            keys.extend(f"{section}.{k}" for k in value)
    return sorted(keys)


def stage_name(job: dict, per_job: bool = False) -> str:
    if per_job or job["rule"] not in GROUP_BY:
        group, names = job["rule"], sorted(job["wildcards"])
    else:
        group, names = GROUP_BY[job["rule"]]
    parts = [group, *(job["wildcards"][k] for k in names)]
    return "-".join(p.replace("/", "_") for p in parts)


# ---------------------------------------------------------------------------------------------
# Code deps: the files a stage's command executes.

_CLI_PREFIX = re.compile(r"\{PCLBENCH:q\}\s+([a-z][a-z0-9-]*)")
_LAUNCH_PREFIX = re.compile(r"\{PCLBENCH_LAUNCH:q\}.*?\s--\s+([a-z][a-z0-9-]*)", re.S)


def rule_entry(shell: str) -> tuple[str, str]:
    """``(entry module, subcommand)`` a rule's shell template runs: ``{PCLBENCH:q} <sub>`` is
    ``python -m pclbench <sub>``; ``{PCLBENCH_LAUNCH:q} ... -- <sub>`` is ``python -m pclbench.pretrain.launch``,
    which runs ``python -m pclbench <sub>`` (common.smk defines both prefixes)."""
    m = _LAUNCH_PREFIX.search(shell)
    if m:
        return "pclbench.pretrain.launch", m.group(1)
    m = _CLI_PREFIX.search(shell)
    if m:
        return "pclbench.cli", m.group(1)
    raise ValueError(f"cannot tell which pclbench subcommand this shell line runs: {shell!r}")


class ImportGraph:
    """Static closure of the ``pclbench`` code one entry point runs (AST only; nothing is imported).

    Name-level reachability: importing a module runs its top level (imports, assignments, decorators,
    class bodies) and the package ``__init__.py`` files above it; a function or class counts once a
    reached piece of code names it (``from .m import f``, a call ``f(...)``, a registry entry), and
    then so do the imports and the module-level names inside it. ``import m`` / ``from . import m``
    (a module object) counts all of ``m``. So a lazy import inside a function (``pclbench.report.tables``
    importing ``pclbench.evaluate`` for the tasks' primary metrics, the CLI importing each stage's module in its
    handler) is a dep only of the stages that can reach that function. Calls through ``getattr`` on
    a string would escape this; ``tests/test_dvc_deps.py`` compares against the modules a subcommand
    really loads (``sys.modules``) to catch such a miss.
    """

    def __init__(self, package_dir: Path = REPO_ROOT / PACKAGE_DIR, package: str = "pclbench"):
        self.dir = Path(package_dir)
        self.package = package
        self._info: dict[str, dict] = {}

    def path(self, module: str) -> Path | None:
        rel = module.split(".")[1:]
        base = self.dir.joinpath(*rel)
        for p in (base.with_suffix(".py"), base / "__init__.py"):
            if p.is_file():
                return p
        return None

    def _base(self, module: str, node: ast.ImportFrom) -> str:
        if not node.level:
            return node.module or ""
        is_pkg = self.path(module).name == "__init__.py"
        parts = module.split(".")
        parts = parts[: len(parts) - node.level + (1 if is_pkg else 0)]
        return ".".join(parts + ([node.module] if node.module else []))

    def _ours(self, name: str) -> bool:
        return (name == self.package or name.startswith(self.package + ".")) and self.path(name) is not None

    def _targets(self, module: str, node: ast.AST) -> list[tuple[str, str]]:
        """(module, name) pairs an import statement reaches; name "*" = the whole module."""
        out = []
        if isinstance(node, ast.Import):
            for a in node.names:
                if self._ours(a.name):
                    out.append((a.name, "*"))
            return out
        base = self._base(module, node)
        for a in node.names:
            if self._ours(f"{base}.{a.name}"):  # a submodule: the module object is used as a whole
                out.append((f"{base}.{a.name}", "*"))
            elif self._ours(base):
                out.append((base, a.name))
        return out

    def info(self, module: str) -> dict:
        """Top-level defs, import aliases, and what the module's top level reaches."""
        if module not in self._info:
            tree = ast.parse(self.path(module).read_text(), str(self.path(module)))
            defs = {n.name: n for n in tree.body
                    if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))}
            aliases = {}
            for node in ast.walk(tree):
                if isinstance(node, ast.ImportFrom) and node.col_offset == 0:
                    for a, (mod, name) in zip(node.names, self._targets(module, node) or []):
                        aliases[a.asname or a.name] = (mod, name)
            top = [n for n in tree.body if not isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
            # decorators and default values of top-level functions run at import time too
            top += [d for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
                    for d in n.decorator_list + n.args.defaults]
            self._info[module] = {"defs": defs, "aliases": aliases, "top": top}
        return self._info[module]

    def _reached_from(self, module: str, nodes: Iterable[ast.AST], skip_defs: bool) -> list[tuple[str, str]]:
        """(module, name) pairs reached by running ``nodes`` (imports and names of this module)."""
        info, out = self.info(module), []
        stack = list(nodes)
        while stack:
            node = stack.pop()
            if skip_defs and isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                continue
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                out += self._targets(module, node)
            elif isinstance(node, ast.Name) and (node.id in info["defs"] or node.id in info["aliases"]):
                out.append((module, node.id))
            stack.extend(ast.iter_child_nodes(node))
        return out

    def reach(self, roots: Iterable[tuple[str, str]], stop: Iterable[tuple[str, str]] = ()) -> set[str]:
        """Modules whose code runs when the ``(module, name)`` roots run (``"*"`` = whole module);
        ``stop``: names that are referenced but never run (the other subcommands' handlers)."""
        todo, done, loaded = list(roots), set(stop), set()
        while todo:
            item = todo.pop()
            if item in done:
                continue
            done.add(item)
            module, name = item
            parts = module.split(".")
            for i in range(1, len(parts) + 1):  # importing a.b.c runs a, a.b, a.b.c top levels
                mod = ".".join(parts[:i])
                if mod not in loaded and self.path(mod) is not None:
                    loaded.add(mod)
                    todo += self._reached_from(mod, self.info(mod)["top"], skip_defs=True)
            info = self.info(module)
            if name == "*":
                todo += [(module, n) for n in info["defs"]]
            elif name in info["defs"]:
                todo += self._reached_from(module, [info["defs"][name]], skip_defs=False)
            elif name in info["aliases"]:
                todo.append(info["aliases"][name])
        return loaded

    def cli_modules(self, handler: str, handlers: Iterable[str], cli: str = "pclbench.cli") -> set[str]:
        """Modules ``python -m pclbench <sub>`` runs for the subcommand whose handler is ``handler``:
        ``build_parser`` names every handler (``set_defaults(func=...)``), ``main`` calls one."""
        roots = [(f"{self.package}.__main__", "*"), (cli, "main"), (cli, handler)]
        stop = [(cli, h) for h in handlers if h != handler]
        return self.reach([r for r in roots if self.path(r[0]) is not None], stop)

    def closure(self, roots: Iterable[str]) -> set[str]:
        """Modules run by ``python -m <root>`` for each root (its whole top level and ``main``)."""
        return self.reach((r, "*") for r in roots)


def cli_handlers(cli_file: Path = REPO_ROOT / PACKAGE_DIR / "cli.py") -> dict[str, str]:
    """Subcommand -> handler function name, read from the CLI's ``build_parser`` source (AST: the CLI
    runs this module's ``write_dvc_yaml``, so importing the CLI here would make an import cycle).

    Each subcommand is ``<var> = <subparsers>.add_parser("<name>", ...)`` followed by
    ``<var>.set_defaults(func=<handler>)``; tests/test_dvc_deps.py checks the result against the parser.
    """
    tree = ast.parse(Path(cli_file).read_text(), str(cli_file))
    build = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "build_parser")
    current: dict[str, str] = {}  # variable -> the subcommand it holds
    handlers: dict[str, str] = {}
    for stmt in build.body:  # in order: a variable holds one subcommand until it is assigned again
        node = stmt.value if isinstance(stmt, ast.Expr) else stmt
        if (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)
                and isinstance(node.value, ast.Call) and isinstance(node.value.func, ast.Attribute)
                and node.value.func.attr == "add_parser" and node.value.args
                and isinstance(node.value.args[0], ast.Constant)):
            current[node.targets[0].id] = node.value.args[0].value
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "set_defaults"
              and isinstance(node.func.value, ast.Name) and node.func.value.id in current):
            for kw in node.keywords:
                if kw.arg == "func" and isinstance(kw.value, ast.Name):
                    handlers[current[node.func.value.id]] = kw.value.id
    return handlers


def code_deps(job: dict, graph: ImportGraph | None = None, handlers: dict[str, str] | None = None,
              workdir: Path = REPO_ROOT) -> list[str]:
    """Files of the workflow directory the job's command executes (relative paths, sorted)."""
    graph = graph or ImportGraph(Path(workdir) / PACKAGE_DIR)
    handlers = handlers if handlers is not None else cli_handlers()
    entry, sub = rule_entry(job["shell"])
    if sub not in handlers:
        raise ValueError(f"rule {job['rule']}: `pclbench {sub}` is not a subcommand of pclbench.cli")
    modules = graph.cli_modules(handlers[sub], handlers.values())
    if entry != "pclbench.cli":
        modules |= graph.closure([entry])
    files = {Path(os.path.relpath(graph.path(m), workdir)).as_posix() for m in modules}
    files |= {job["snakefile"], "workflow/rules/common.smk"}
    return sorted(files)


# ---------------------------------------------------------------------------------------------
# Params: which file holds which key.

def _has_key(doc: dict, dotted: str) -> bool:
    node = doc
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def params_entries(keys: Sequence[str], docs: dict[str, dict]) -> list[dict]:
    """``[{file: [keys it holds]}, ...]`` in the order of ``docs`` (the merge order)."""
    entries = []
    for name, doc in docs.items():
        held = [k for k in keys if _has_key(doc, k)]
        if held:
            entries.append({name: held})
    missing = [k for k in keys if not any(_has_key(d, k) for d in docs.values())]
    if missing:
        raise ValueError(f"config keys {missing} are in none of the config files {list(docs)}")
    return entries


def config_docs(configfiles: Sequence[str], workdir: Path = REPO_ROOT) -> dict[str, dict]:
    names = list(dict.fromkeys([DEFAULT_CONFIG, *configfiles]))
    return {n: yaml.safe_load((Path(workdir) / n).read_text()) or {} for n in names}


def relative_configfiles(configfiles: Sequence[str | Path], workdir: Path = REPO_ROOT) -> list[str]:
    """Config files as paths relative to the workflow directory (the stage commands' working dir)."""
    out = []
    for c in configfiles:
        p = Path(c)
        p = p if p.is_absolute() else Path.cwd() / p
        rel = os.path.relpath(p.resolve(), Path(workdir).resolve())
        if rel.startswith(".."):
            raise ValueError(f"config file {c} is outside the workflow directory {workdir}")
        out.append(Path(rel).as_posix())
    return out


# ---------------------------------------------------------------------------------------------

def output_kind(rule: str, path: str) -> str:
    """``metrics`` for the tables' ``results/metrics.json`` (``dvc metrics show/diff``), else ``outs``."""
    if rule == "tables" and path.rsplit("/", 1)[-1] == "metrics.json":
        return "metrics"
    return "outs"


def training_curves_plot(jobs: list[dict]) -> dict:
    """The top-level ``training_curves`` plot: each trained method's curve on one chart."""
    y = {}
    for job in jobs:
        if job["rule"] != "pretrain" or job["base_method"] in UNTRAINED:
            continue
        if job["base_method"] not in COMPARED_LOSS:
            raise ValueError(f"method {job['base_method']!r} has no entry in dvc_export.COMPARED_LOSS "
                             f"(the metrics.csv column its training curve is drawn from)")
        csv = next(o for o in job["output"] if o.endswith("/metrics.csv"))
        y[csv] = COMPARED_LOSS[job["base_method"]]
    return {"training_curves": {"title": "Training curves: each method's contrastive loss per iteration",
                                "x": "iteration", "y": dict(sorted(y.items())),
                                "x_label": "iteration", "y_label": "loss"}}


def dvc_document(jobs: list[dict], configfiles: Sequence[str] = (), per_job: bool = False,
                 workdir: Path = REPO_ROOT) -> dict:
    docs = config_docs(configfiles, workdir)
    graph, handlers = ImportGraph(Path(workdir) / PACKAGE_DIR), cli_handlers()
    groups: dict[str, list[dict]] = {}
    for job in jobs:
        groups.setdefault(stage_name(job, per_job), []).append(job)
    extra = ["--configfile", *configfiles] if configfiles else []
    stages = {}
    for name, members in groups.items():
        rules = sorted({j["rule"] for j in members})
        outputs = sorted({o for j in members for o in j["output"]})
        inputs = sorted({i for j in members for i in j["input"]} - set(outputs))
        code = sorted({f for j in members for f in code_deps(j, graph, handlers, workdir)})
        stage = {
            # targets first: --configfile and --allowed-rules take several values and would swallow
            # them. DVC runs cmd through a shell: shlex.join quotes every path.
            "cmd": shlex.join(["snakemake", *outputs, "--cores", "all", *extra, "--allowed-rules", *rules]),
            "deps": inputs + code,
        }
        keys = sorted({k for j in members for k in j["sections"]})
        if keys:
            stage["params"] = params_entries(keys, docs)
        kinds = {p: output_kind(j["rule"], p) for j in members for p in j["output"]}
        stage["outs"] = [p for p in outputs if kinds[p] == "outs"]
        metrics = [p for p in outputs if kinds[p] == "metrics"]
        if metrics:
            stage["metrics"] = metrics
        stages[name] = stage
    doc = {"stages": dict(sorted(stages.items()))}
    plot = training_curves_plot(jobs)
    if next(iter(plot.values()))["y"]:
        doc["plots"] = [plot]
    return doc


def options_line(configfiles: Sequence[str] = (), per_job: bool = False) -> str:
    opts = [*(f"--configfile {shlex.quote(c)}" for c in configfiles), *(["--per-job"] if per_job else [])]
    return f"{OPTIONS_LINE} {' '.join(opts)}".rstrip() + "\n"


def parse_options_line(text: str) -> tuple[list[str], bool]:
    """The ``--configfile`` list and ``--per-job`` a generated dvc.yaml was made with."""
    for line in text.splitlines():
        if line.startswith(OPTIONS_LINE):
            words = shlex.split(line[len(OPTIONS_LINE):])
            files = [words[i + 1] for i, w in enumerate(words) if w == "--configfile"]
            return files, "--per-job" in words
    return [], False


def render(configfiles: Sequence[str | Path] = (), per_job: bool = False, workdir: Path = REPO_ROOT,
           jobs: list[dict] | None = None) -> str:
    rel = relative_configfiles(configfiles, workdir)
    jobs = jobs if jobs is not None else snakemake_jobs(rel and [Path(workdir) / c for c in rel], workdir)
    doc = dvc_document(jobs, rel, per_job, workdir)
    return HEADER + options_line(rel, per_job) + yaml.safe_dump(doc, sort_keys=False, width=120)


def write_dvc_yaml(out: Path, configfiles: Sequence[str | Path] = (), per_job: bool = False) -> Path:
    text = render(configfiles, per_job)
    out = Path(out)
    atomic_write_text(out, text)
    return out
