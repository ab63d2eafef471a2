"""Each DVC stage depends on the code it runs, and on no other (dvc_export.code_deps).

Independent check: the subcommands are run for real on tiny SynthFaces data (generate, align,
pretrain, extract, figures curves) or up to a failure after their imports (tables, probe), and the
modules they loaded are read from ``sys.modules`` at exit (their ``__file__``). Every such file must
be a dep of the stage running that subcommand in the committed dvc.yaml (the static walk misses
nothing it ran), and the tables code must be a dep of the report stage only.
"""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from pclbench.core import dvc_export

RUNNER = textwrap.dedent("""\
    import atexit, json, runpy, sys
    out = sys.argv[1]
    def dump():
        mods = {m: getattr(mod, "__file__", None) for m, mod in list(sys.modules.items())
                if m == "pclbench" or m.startswith("pclbench.")}
        with open(out, "w") as fh:
            json.dump(mods, fh)
    atexit.register(dump)
    sys.argv = ["pclbench", *sys.argv[2:]]
    runpy.run_module("pclbench", run_name="__main__", alter_sys=True)
""")


@pytest.fixture(scope="module")
def stages(repo_root):
    return yaml.safe_load((repo_root / "dvc.yaml").read_text())["stages"]


@pytest.fixture(scope="module")
def loaded(repo_root, tmp_path_factory):
    """subcommand -> repository files of the pclbench modules it loaded (relative paths)."""
    tmp = tmp_path_factory.mktemp("dvc_deps")
    cfg = ["--config", str(repo_root / "config" / "config.yaml"), "--config", str(repo_root / "config" / "tiny.yaml")]
    runs = {
        "generate": (["generate", *cfg, "--dataset", "synth_vox", "--out", str(tmp / "raw")], True),
        "align": (["align", *cfg, "--raw", str(tmp / "raw"), "--dataset", "synth_vox", "--split", "train",
                   "--out", str(tmp / "aligned")], True),
        "pretrain": (["pretrain", *cfg, "--method", "pcl", "--data", str(tmp / "aligned"), "--out", str(tmp / "pcl")], True),
        "extract": (["extract", *cfg, "--checkpoint", str(tmp / "pcl" / "checkpoint.pt"), "--data", str(tmp / "aligned"),
                     "--out", str(tmp / "features.npz")], True),
        "figures": (["figures", *cfg, "curves", "--method", "pcl", "--metrics", str(tmp / "pcl" / "metrics.csv"),
                     "--out", str(tmp / "curves.png")], True),
        # up to a failure after the handler's imports: no probe results / features to read
        "tables": (["tables", *cfg, "--out", str(tmp / "tables"), "--published", str(tmp / "missing.yaml"),
                    str(tmp / "missing.json")], False),
        "probe": (["probe", *cfg, "--benchmark", "synth_expression", "--method", "pcl", "--features-root",
                   str(tmp / "nofeatures"), "--aligned-root", str(tmp / "noaligned"), "--raw-root", str(tmp / "noraw"),
                   "--out", str(tmp / "probe.json")], False),
    }
    out = {}
    for sub, (argv, ok) in runs.items():  # in this order: each run reads the previous ones' outputs
        dump = tmp / f"{sub}.json"
        proc = subprocess.run([sys.executable, "-c", RUNNER, str(dump), *argv], cwd=tmp, capture_output=True,
                              text=True, timeout=600)
        assert (proc.returncode == 0) == ok, f"{sub}: {proc.returncode}\n{proc.stderr[-3000:]}"
        files = json.loads(dump.read_text()).values()
        out[sub] = {Path(f).resolve().relative_to(repo_root).as_posix() for f in files if f}
    return out


# subcommand -> the stage of the committed dvc.yaml whose command runs it
STAGE_OF = {"generate": "generate", "align": "align-synth_vox", "pretrain": "pretrain-pcl",
            "extract": "evaluate-pcl", "probe": "evaluate-pcl", "figures": "report", "tables": "report"}


@pytest.mark.parametrize("sub", sorted(STAGE_OF))
def test_every_module_a_subcommand_loads_is_a_dep_of_its_stage(sub, loaded, stages):
    assert "src/pclbench/cli.py" in loaded[sub]
    missing = loaded[sub] - set(stages[STAGE_OF[sub]]["deps"])
    assert not missing, f"{STAGE_OF[sub]} runs {sorted(missing)} but does not list them as deps"


def test_tables_code_is_a_dep_of_the_report_only(loaded, stages):
    tables = "src/pclbench/report/tables.py"
    assert tables in loaded["tables"]
    assert tables not in loaded["align"] | loaded["pretrain"] | loaded["generate"] | loaded["extract"]
    assert {name for name, st in stages.items() if tables in st["deps"]} == {"report"}
    # and the code that does run there is listed: alignment for align-*, the trainer for pretrain-*
    for name, st in stages.items():
        if name.startswith("align-"):
            assert "src/pclbench/align/aligner.py" in st["deps"] and "workflow/rules/align.smk" in st["deps"]
        if name.startswith("pretrain-"):
            assert {"src/pclbench/pretrain/trainer.py", "src/pclbench/pretrain/launch.py", "workflow/rules/pretrain.smk"} <= set(st["deps"])
            assert "src/pclbench" not in st["deps"]


def test_the_import_walk_on_a_small_package(tmp_path):
    """Known answers: a lazy import counts only inside code that is reached."""
    pkg = tmp_path / "src" / "pkg"
    (pkg / "sub").mkdir(parents=True)
    files = {
        "__init__.py": "",
        "__main__.py": "from .cli import main\nmain()\n",
        "cli.py": textwrap.dedent("""\
            from .base import helper
            def cmd_a(args):
                from .a import run
                return run()
            def cmd_b(args):
                from . import b
                return b.go()
            def main():
                handlers = {"a": cmd_a, "b": cmd_b}
                return helper(handlers)
        """),
        "base.py": "def helper(x):\n    return x\n",
        "a.py": "from .sub.leaf import used\ndef run():\n    return used()\ndef unused():\n    from .heavy import x\n",
        "b.py": "def go():\n    return 1\n",
        "heavy.py": "x = 1\n",
        "sub/__init__.py": "",
        "sub/leaf.py": "def used():\n    return 1\n",
    }
    for name, text in files.items():
        (pkg / name).write_text(text)
    graph = dvc_export.ImportGraph(pkg, package="pkg")
    a = graph.cli_modules("cmd_a", ["cmd_a", "cmd_b"], cli="pkg.cli")
    b = graph.cli_modules("cmd_b", ["cmd_a", "cmd_b"], cli="pkg.cli")
    common = {"pkg", "pkg.__main__", "pkg.cli", "pkg.base"}
    assert a == common | {"pkg.a", "pkg.sub", "pkg.sub.leaf"}
    assert b == common | {"pkg.b"}


def test_cli_handlers_read_from_the_source_are_the_parsers():
    """dvc_export reads the subcommand -> handler map from cli.py's source (importing the CLI from
    dvc_export would be an import cycle: the CLI's dvc-yaml runs dvc_export); the parser is the reference."""
    from pclbench.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    assert dvc_export.cli_handlers() == {name: p.get_default("func").__name__ for name, p in sub.choices.items()}
