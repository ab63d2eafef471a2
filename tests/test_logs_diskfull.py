"""Job logs on a full disk (pclbench.core.joblog, `pclbench <stage> --log FILE`): the error reaches the user.

How the failures are simulated, each from its documented kernel behaviour:

- ``/dev/full``: "Writes to the /dev/full device fail with an ENOSPC error" (Linux man-pages,
  full(4)). A log that is /dev/full is a log on a disk that is full from the first byte.
- ``RLIMIT_FSIZE``: "attempts to extend a file beyond this limit result in delivery of a SIGXFSZ
  signal ... If the process is ignoring SIGXFSZ, the system call fails with the error EFBIG"
  (setrlimit(2)). A log that fills up in the middle of a job: the first bytes land, the rest fail.
- a log whose folder is a file in the way: the log cannot even be created.

What the user must see when the log is lost (Snakemake prints only ``Logfile ... empty file`` /
``Logfile ... not found.``, snakemake 9.27.1 ``snakemake/logging.py`` ``show_logs``): the error
message on the job's own stderr and a non-zero exit status.
"""
from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pclbench.cli import load_config

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT / "src")}


def _pclbench(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pclbench", *args], capture_output=True, text=True, cwd=ROOT,
                          env=ENV, timeout=timeout)


def _python(code: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, cwd=ROOT,
                          env=ENV, timeout=timeout)


needs_dev_full = pytest.mark.skipif(not (os.path.exists("/dev/full") and stat.S_ISCHR(os.stat("/dev/full").st_mode)),
                                    reason="/dev/full (Linux full(4)) is not available")


@needs_dev_full
def test_premise_dev_full_gives_enospc():
    import errno

    fd = os.open("/dev/full", os.O_WRONLY | os.O_APPEND)
    try:
        with pytest.raises(OSError) as e:
            os.write(fd, b"x")
        assert e.value.errno == errno.ENOSPC
    finally:
        os.close(fd)


@needs_dev_full
def test_full_log_the_error_reaches_stderr_with_nonzero_status(tmp_path):
    missing = tmp_path / "no-such-config.yaml"
    proc = _pclbench("validate-config", "--config", str(missing), "--log", "/dev/full")
    assert proc.returncode == 2
    # the command's own message, then the final line naming the failure and the lost log
    assert f"config file {missing} does not exist" in proc.stderr
    assert "cannot write the log /dev/full (No space left on device)" in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("pclbench validate-config: failed (exit 2): pclbench: config error: config file"), last
    assert "could not be written" in last


@needs_dev_full
def test_full_log_with_an_uncaught_exception_gives_its_traceback_on_stderr(tmp_path):
    proc = _pclbench("contact-sheet", "--data", str(tmp_path / "absent"), "--out", str(tmp_path / "s.png"),
                     "--log", "/dev/full")
    assert proc.returncode == 1
    assert "Traceback" in proc.stderr  # the log is lost, so the whole report comes here
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("pclbench contact-sheet: failed (exit 1): ") and "Error" in last, last


def test_writable_log_gets_everything_and_stderr_only_the_final_line(tmp_path):
    log = tmp_path / "logs" / "validate.log"  # its folder does not exist yet
    missing = tmp_path / "absent.yaml"
    proc = _pclbench("validate-config", "--config", str(missing), "--log", str(log))
    assert proc.returncode == 2
    assert f"config file {missing} does not exist" in log.read_text()
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pclbench validate-config: failed (exit 2): ") and \
        f"log: {log}" in lines[0], proc.stderr


def test_success_writes_only_the_log_and_appends(tmp_path):
    log = tmp_path / "ok.log"
    log.write_text("earlier attempt\n")  # the pretrain rule appended (>>): kept
    proc = _pclbench("validate-config", "--log", str(log))
    assert proc.returncode == 0 and proc.stdout == "" and proc.stderr == ""
    assert log.read_text() == "earlier attempt\nconfig OK\n"


def test_log_that_cannot_be_created_falls_back_to_stderr(tmp_path):
    blocker = tmp_path / "logs"
    blocker.write_text("a file where the log folder should be\n")
    proc = _pclbench("validate-config", "--config", str(tmp_path / "absent.yaml"), "--log", str(blocker / "x.log"))
    assert proc.returncode == 2
    assert f"cannot write the log {blocker / 'x.log'}" in proc.stderr
    assert "does not exist" in proc.stderr.strip().splitlines()[-1]
    assert blocker.read_text() == "a file where the log folder should be\n"


def test_log_filling_up_mid_run_keeps_the_start_and_sends_the_rest_to_stderr(tmp_path):
    """RLIMIT_FSIZE (setrlimit(2)): the log takes 64 bytes, then every write fails with EFBIG."""
    log = tmp_path / "job.log"
    proc = _python(f"""
        import os, resource, signal, subprocess, sys
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (64, 64))
        from pclbench.core.joblog import run_logged

        def job():
            print("line 1 fits into the log")
            for i in range(20):
                print(f"progress line {{i:02d}} .........................")
            os.write(2, b"written by native code to fd 2\\n")
            subprocess.run(["sh", "-c", "echo from a child process >&2"])
            print("ValueError: the real reason the job failed", file=sys.stderr)
            return 3

        sys.exit(run_logged({str(log)!r}, "demo", job))
    """)
    assert proc.returncode == 3
    assert log.stat().st_size <= 64 and log.read_text().startswith("line 1 fits into the log\n")
    err = proc.stderr
    assert re.search(r"cannot write the log .*job\.log \(File too large\)", err), err
    # after the log was given up, everything, native and child output included, reached stderr
    for text in ("progress line 19", "written by native code to fd 2", "from a child process",
                 "ValueError: the real reason the job failed"):
        assert text in err, (text, err)
    assert err.strip().splitlines()[-1] == (f"pclbench demo: failed (exit 3): ValueError: the real reason the job "
                                            f"failed [the log {log} could not be written]")


def test_exit_status_of_a_systemexit_is_kept(tmp_path):
    """The trainer's 75 (requeue) and 73 (locked) drive Snakemake's retries: never turned into 1."""
    log = tmp_path / "pretrain.log"
    proc = _python(f"""
        import sys
        from pclbench.core.joblog import run_logged

        class Preempted(SystemExit):
            def __init__(self):
                super().__init__(75)
                self.message = "stopped by SIGUSR1; state saved"

        def job():
            raise Preempted()

        sys.exit(run_logged({str(log)!r}, "pretrain", job))
    """)
    assert proc.returncode == 75
    assert "stopped by SIGUSR1; state saved" in log.read_text()
    assert proc.stderr.strip() == f"pclbench pretrain: failed (exit 75): stopped by SIGUSR1; state saved [log: {log}]"


def test_native_and_child_output_go_to_the_log_like_the_shell_redirection(tmp_path):
    log = tmp_path / "job.log"
    proc = _python(f"""
        import os, subprocess, sys
        from pclbench.core.joblog import run_logged

        def job():
            os.write(1, b"native stdout\\n")
            subprocess.run(["sh", "-c", "echo child stderr >&2; echo child stdout"])
            print("python stdout")
            return 0

        sys.exit(run_logged({str(log)!r}, "demo", job))
    """)
    assert proc.returncode == 0 and proc.stdout == "" and proc.stderr == ""
    assert set(log.read_text().splitlines()) == {"native stdout", "child stderr", "child stdout", "python stdout"}


def test_in_process_use_restores_descriptors_and_streams(tmp_path, capfd):
    from pclbench.core.joblog import run_logged

    before = sys.stdout, sys.stderr
    rc = run_logged(tmp_path / "x.log", "demo", lambda: print("into the log") or 0)
    assert rc == 0 and (sys.stdout, sys.stderr) == before
    print("after")
    assert capfd.readouterr().out == "after\n"
    assert (tmp_path / "x.log").read_text() == "into the log\n"


def test_every_rule_passes_its_log_to_pclbench_instead_of_a_shell_redirection():
    """A shell `> {log} 2>&1` would lose the error on a full results disk (module doc)."""
    n = 0
    for smk in sorted((ROOT / "workflow" / "rules").glob("*.smk")):
        text = smk.read_text()
        assert not re.search(r">>?\s*\{log", text), f"{smk.name}: a rule still redirects into its log"
        for m in re.finditer(r"\n(\s*)log:\n", text):
            # the rule's shell (after its log directive) ends with --log {log:q}
            shell = text[m.end():].split("shell:", 1)[1].split("\n\n", 1)[0]
            assert "--log {log:q}" in shell, (smk.name, shell)
            assert re.search(r"\{PCLBENCH(_LAUNCH)?:q\}", shell), (smk.name, shell)
            n += 1
    assert n >= 14  # every rule with a log (generate, acquire, prepare, contact_sheet, align x3, ...)


def test_paths_logs_setting_moves_the_logs(tmp_path):
    """paths.logs: the rules' logs go there (a dry run lists them); null keeps <results>/logs."""
    extra = tmp_path / "extra.yaml"
    extra.write_text("paths:\n  logs: /elsewhere/pclbench-logs\n")
    cmd = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "-d", str(tmp_path), "-n", "--cores",
           "1", "--configfile", str(ROOT / "config/config.yaml"), str(extra), "--", "data/raw/synth_vox"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180, env=ENV)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "/elsewhere/pclbench-logs/generate/synth_vox.log" in proc.stdout


@needs_dev_full
def test_a_several_line_message_is_summarised_by_its_first_line(tmp_path):
    """`pclbench acquire` of a licence-gated set not in place: what to obtain (many lines) on a full log."""
    from test_acquire import MANUAL

    params = json.dumps({"datasets": {"raf_db": MANUAL}, "paths": {"sources": str(tmp_path / "s"), "raw": "r",
                                                                    "aligned": "a", "results": str(tmp_path / "res")}})
    download = json.dumps({**load_config([ROOT / "config" / "config.yaml"])["download"],
                           "lock_file": str(tmp_path / "lock.yaml")})
    proc = _pclbench("acquire", "--params", params, "--download", download, "--dataset", "raf_db",
                     "--log", "/dev/full")
    assert proc.returncode == 1
    assert "What to obtain:" in proc.stderr  # the whole message, the log being lost
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("pclbench acquire: failed (exit 1): pclbench acquire: dataset 'raf_db' is "
                           "licence-gated and must be obtained by you"), last


def test_schema_checks_the_new_paths_like_the_others():
    from pclbench.core.config import ConfigError, check_config_values
    from pclbench.core.schema import validate_config

    base = {"raw": "r", "aligned": "a", "results": "res", "sources": "s"}
    for key in ("logs", "receipts"):
        for ok in (None, "/scratch/pclbench logs"):
            validate_config({"paths": {**base, key: ok}}, partial=True)
        with pytest.raises(ConfigError, match=rf"paths\.{key}"):
            validate_config({"paths": {**base, key: "logs;rm -rf x"}}, partial=True)
        with pytest.raises(ConfigError, match=rf"paths\.{key}.*shell syntax"):
            check_config_values({"paths": {**base, key: "$(id)"}})


def test_a_fifo_in_the_logs_place_does_not_hang_the_job(tmp_path):
    """open(2): O_WRONLY | O_NONBLOCK on a FIFO with no reader fails with ENXIO (instead of waiting)."""
    fifo = tmp_path / "job.log"
    os.mkfifo(fifo)
    proc = _pclbench("validate-config", "--config", str(tmp_path / "absent.yaml"), "--log", str(fifo), timeout=60)
    assert proc.returncode == 2
    assert f"cannot write the log {fifo}" in proc.stderr and "does not exist" in proc.stderr
