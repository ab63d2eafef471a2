"""Temporary files of every single-file writer: removed when the write fails, dead writers' on the next write.

Each writer goes through :func:`pclbench.core.io.atomic_file` (temporary ``.<name>.tmp-<host>-<pid>-*``).
A disk that fills up in the middle of a write is simulated with ``RLIMIT_FSIZE``: "attempts to extend
a file beyond this limit result in delivery of a SIGXFSZ signal ... If the process is ignoring
SIGXFSZ, the system call fails with the error EFBIG" (Linux man-pages, setrlimit(2)); it fails the
same ``write`` call that ``ENOSPC`` fails, from inside the process, without a full file system.
A killed writer is simulated by a temporary named after a pid that has exited.
"""
from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pclbench.core.io import atomic_file, atomic_write_text, remove_stale_tmp

ROOT = Path(__file__).resolve().parents[1]
HOST = re.sub(r"[^A-Za-z0-9_.]", "_", socket.gethostname()) or "host"


def _dead_pid() -> int:
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


def _leftovers(final: Path) -> dict[str, Path]:
    """A dead writer's temp file and folder, a live writer's (this test process) and another host's."""
    dead = _dead_pid()
    made = {
        "dead_file": final.parent / f".{final.name}.tmp-{HOST}-{dead}-a1b2c3",
        "dead_dir": final.parent / f".{final.name}.tmp-{HOST}-{dead}-d4e5f6",
        "live": final.parent / f".{final.name}.tmp-{HOST}-{os.getpid()}-keep",
        "other_host": final.parent / f".{final.name}.tmp-otherhost{HOST}-{dead}-keep",
    }
    final.parent.mkdir(parents=True, exist_ok=True)
    made["dead_file"].write_text("half")
    made["dead_dir"].mkdir()
    (made["dead_dir"] / "x").write_text("half")
    made["live"].write_text("being written")
    made["other_host"].write_text("another node's")
    return made


def test_atomic_file_removes_its_temp_when_the_body_fails(tmp_path):
    final = tmp_path / "out.json"
    final.write_text("previous good output\n")
    with pytest.raises(RuntimeError):
        with atomic_file(final) as tmp:
            tmp.write_text("half of the new one")
            raise RuntimeError("disk full")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]
    assert final.read_text() == "previous good output\n"


def test_stale_temps_of_dead_writers_go_live_and_foreign_ones_stay(tmp_path):
    final = tmp_path / "out.json"
    made = _leftovers(final)
    atomic_write_text(final, "new\n")
    assert final.read_text() == "new\n"
    assert not made["dead_file"].exists() and not made["dead_dir"].exists()
    assert made["live"].read_text() == "being written" and made["other_host"].read_text() == "another node's"


def test_remove_stale_tmp_never_follows_a_symlink(tmp_path):
    target = tmp_path / "precious"
    target.mkdir()
    (target / "data").write_text("keep")
    link = tmp_path / "d" / f".out.tmp-{HOST}-{_dead_pid()}-zz"
    link.parent.mkdir()
    link.symlink_to(target, target_is_directory=True)
    assert remove_stale_tmp(tmp_path / "d" / "out") == [link]
    assert not link.is_symlink() and (target / "data").read_text() == "keep"


# Each writer: (output file name, code writing `payload` (a str of `n` chars) to `out`).
WRITERS = {
    "io.atomic_write_text": ("a.txt", "from pclbench.core.io import atomic_write_text; atomic_write_text(out, payload)"),
    "probe result": ("bench.json", "from pclbench.evaluate import save_result; save_result({'x': payload}, out)"),
    "table": ("expression.md", "from pclbench.report.render import write_atomic; write_atomic(out, payload)"),
    "run info": ("extract.run.json",
                 "from pclbench.core.provenance import write_run_info; write_run_info(out.parent, 't', filename=out.name, "
                 "note=payload)"),
    "acquire receipt": ("lfw.receipt.json",
                        "from pclbench.data.acquire import _atomic_json; _atomic_json(out, {'x': payload})"),
    "align work file": ("work.json",
                        "from pclbench.align.workdir import prepare_work; prepare_work(out.parent, {'x': payload})"),
    "align contact sheet": ("qc_samples.png", """
        import numpy as np
        from pclbench.align.contact_sheet import contact_sheet
        rng = np.random.default_rng(len(payload))
        k = 1 if len(payload) < 100 else 16
        contact_sheet(rng.integers(0, 256, (k, 3, 64, 64), dtype=np.uint8), range(k), out)
    """),
    "figure (placeholder)": ("bars_pose.png", """
        from pclbench.report.figures import placeholder
        placeholder(out, payload[:20000], 100 if len(payload) < 100 else 300)
    """),
    "extract features": ("test.npz", """
        import numpy as np, pandas as pd
        import pclbench.pretrain.checkpoint as ck, pclbench.align.shards as sh, pclbench.evaluate.extract as ex
        from pclbench.cli import load_config
        n = 4
        class Shard:
            images = None
            manifest = pd.DataFrame({'row': range(n)})
        ck.load_encoder = lambda *a, **k: None
        sh.open_shard = lambda p: Shard
        dim = max(1, len(payload) // 16)
        ex.encode_images = lambda *a: {k: np.ones((n, dim), np.float32) for k in ex.READOUTS}
        ex.extract(Path('ck.pt'), Path('data'), out, ex.evaluate_config(load_config()))
    """),
}


@pytest.mark.parametrize("writer", sorted(WRITERS))
def test_writer_cleans_its_temp_on_a_full_disk_and_dead_writers_temps_on_start(tmp_path, writer):
    name, code = WRITERS[writer]
    final = tmp_path / "out" / name
    made = _leftovers(final)
    script = textwrap.dedent("""
        import resource, signal, sys
        from pathlib import Path
        out = Path(sys.argv[1])
        def write(payload):
        {body}
        write("small")  # succeeds: dead writers' leftovers are removed first
        good = out.read_bytes()
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))  # setrlimit(2): EFBIG past 4 KiB
        try:
            write("x" * 200_000)
        except OSError as e:
            print("failed as expected:", e.errno)
        else:
            sys.exit("the big write did not fail")
        assert out.read_bytes() == good, "the previous output was changed"
    """).format(body=textwrap.indent(textwrap.dedent(code).strip(), "    "))
    proc = subprocess.run([sys.executable, "-c", script, str(final)], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT / "src")}, timeout=120)
    assert proc.returncode == 0 and "failed as expected: 27" in proc.stdout, proc.stdout + proc.stderr  # EFBIG
    left = sorted(p.name for p in final.parent.iterdir())
    assert left == sorted([final.name, made["live"].name, made["other_host"].name]), left


def test_no_writer_builds_temporary_names_by_hand():
    """Every single-file writer uses pclbench.core.io (above); a hand-made `.<name>.<pid>.tmp` would leak on
    a full disk. One exception: stage1.py's .pts writer, which writes inside an atomic_dir temporary folder
    (removed with it) and must never replace an existing file."""
    allowed = {"stage1.py"}
    bad = []
    for py in (ROOT / "src" / "pclbench").rglob("*.py"):
        if py.name in allowed:
            continue
        for i, line in enumerate(py.read_text().splitlines(), 1):
            if re.search(r"with_name\(f\"\.\{.*\}.*\.tmp|getpid\(\)\}\.tmp|\.tmp\"\)", line):
                bad.append(f"{py.relative_to(ROOT)}:{i}: {line.strip()}")
    assert not bad, "\n".join(bad)


def test_atomic_dir_cleans_a_dead_writers_temp_folder_on_start(tmp_path):
    """The shard / dataset folders (`.<split>.tmp-<host>-<pid>-*`, pclbench.core.io.atomic_dir)."""
    from pclbench.core.io import atomic_dir

    final = tmp_path / "aligned" / "train"
    made = _leftovers(final)
    with pytest.raises(OSError):
        with atomic_dir(final) as tmp:
            (tmp / "images.npy").write_bytes(b"half")
            raise OSError(28, "No space left on device")
    left = sorted(p.name for p in final.parent.iterdir())
    assert left == sorted([made["live"].name, made["other_host"].name]), left


def test_previous_output_renamed_aside_by_a_killed_writer_is_put_back(tmp_path):
    """atomic_dir renames the previous output aside, then the new one into place: a writer killed in
    between left no `final` but `.<name>.old-<host>-<dead pid>-*`, which the next start restores."""
    from pclbench.core.io import atomic_dir

    final = tmp_path / "raw" / "raf_db"
    final.parent.mkdir()
    old = final.parent / f".raf_db.old-{HOST}-{_dead_pid()}-0a1b2c3d"
    old.mkdir()
    (old / "meta.json").write_text("previous good output")
    live_old = final.parent / f".raf_db.old-{HOST}-{os.getpid()}-keep"
    live_old.mkdir()
    with pytest.raises(RuntimeError):
        with atomic_dir(final):
            raise RuntimeError("this rerun fails")
    assert (final / "meta.json").read_text() == "previous good output"
    assert not old.exists() and live_old.is_dir()
    # the new output is in place and a dead writer's old one is left: it is deleted
    old.mkdir()
    (old / "meta.json").write_text("older")
    with atomic_dir(final) as tmp:
        (tmp / "meta.json").write_text("new")
    assert (final / "meta.json").read_text() == "new" and not old.exists()
    assert sorted(p.name for p in final.parent.iterdir()) == sorted(["raf_db", live_old.name])


def test_archive_extraction_cleans_a_killed_extractions_temp_folder(tmp_path):
    """pclbench.data.archive.extract_archive unpacks into `.extract-<archive>.tmp-<host>-<pid>-*` inside the
    dataset folder first; a killed acquire left one, the next extraction removes it."""
    import io
    import tarfile

    from pclbench.data.archive import extract_archive

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        ti = tarfile.TarInfo("lfw/a.jpg")
        ti.size = 4
        tf.addfile(ti, io.BytesIO(b"jpeg"))
    archive = tmp_path / "lfw.tgz"
    archive.write_bytes(buf.getvalue())
    target = tmp_path / "sources" / "lfw"
    made = _leftovers(target / "extract-lfw.tgz")
    assert extract_archive(archive, target, max_bytes=10**6, max_files=10) == ["lfw"]
    assert (target / "lfw" / "a.jpg").read_bytes() == b"jpeg"
    left = sorted(p.name for p in target.iterdir())
    assert left == sorted(["lfw", made["live"].name, made["other_host"].name]), left
