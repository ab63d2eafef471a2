"""Pre-emption check of the real trainer process on any device (what a cluster does to a job: signals, time limits, requeues).

Runs ``python -m pclbench pretrain`` three times on one temporary shard of random pixels:

1. uninterrupted, to the end;
2. the same run, sent SIGTERM (what Slurm sends at pre-emption / time limit) once its
   ``metrics.jsonl.partial`` holds ``--stop-after`` iterations: it must save its state and exit 75;
3. the same command again: it must resume from the saved state and finish (exit 0).

Writes JSON: the exit statuses, whether the state file existed, the iteration the run stopped at,
and the largest absolute difference between the weights of runs 1 and 3. On a CPU the difference is
0 (bitwise; tests/test_resume.py checks that too); on CUDA, cuDNN's non-deterministic kernels make
it small but non-zero, so the figure is reported, not asserted.

    python benchmarks/resume_check.py --device cuda --out $OUT/resume_cuda.json
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from pclbench.pretrain.checkpoint import load_checkpoint  # noqa: E402
from pclbench.core.config import deep_merge  # noqa: E402
from train_step import load_config, make_shard  # noqa: E402

EXIT_REQUEUE = 75


def run(params: dict, shard: Path, out: Path, log: Path, stop_after: int | None = None,
        timeout: float = 900) -> tuple[int, int | None]:
    """One ``pclbench pretrain`` process; with ``stop_after``, SIGTERM once that many iterations are
    logged. Returns (exit status, iterations logged when the signal was sent)."""
    cmd = [sys.executable, "-m", "pclbench", "pretrain", "--params", json.dumps(params), "--method", "pcl",
           "--data", str(shard), "--out", str(out)]
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    with open(log, "a") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env)
        sent_at = None
        t0 = time.monotonic()
        while proc.poll() is None:
            if time.monotonic() - t0 > timeout:
                proc.kill()
                raise SystemExit(f"resume_check: pretrain did not finish in {timeout} s (log {log})")
            if stop_after is not None and sent_at is None:
                partial = out / "metrics.jsonl.partial"
                n = len(partial.read_text().splitlines()) if partial.is_file() else 0
                if n >= stop_after:
                    proc.send_signal(signal.SIGTERM)
                    sent_at = n
            time.sleep(0.05)
    return proc.returncode, sent_at


def max_weight_diff(a: Path, b: Path) -> float:
    sa, sb = load_checkpoint(a)["model"], load_checkpoint(b)["model"]
    if sa.keys() != sb.keys():
        raise SystemExit(f"resume_check: the two checkpoints hold different parameters")
    return max(float((sa[k].double() - sb[k].double()).abs().max()) if sa[k].numel() else 0.0 for k in sa)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", action="append", default=[], help="config YAML(s), merged in order")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--videos", type=int, default=64, help="videos of 2 frames in the shard")
    ap.add_argument("--stop-after", type=int, default=3, help="iterations logged before SIGTERM")
    ap.add_argument("--compile", default="off", help="pretrain.compile mode (e.g. reduce-overhead on CUDA)")
    ap.add_argument("--channels-last", action="store_true", help="pretrain.channels_last")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)

    cfg = load_config(args.config)
    cfg = deep_merge(cfg, {
        "model": {"width": args.width},
        "pcl": {"pose_batch": 4, "n_negatives": 8},
        "pretrain": {"epochs": args.epochs, "batch_size": args.batch, "device": args.device, "log_every": 1,
                     "checkpoint_every": 1, "swap_grid_every": 0, "num_threads": 2,
                     "compile": args.compile, "channels_last": args.channels_last},
    })
    params = {k: cfg[k] for k in ("model", "views", "pcl", "pretrain")}
    with tempfile.TemporaryDirectory(prefix="pclbench_resume_") as tmp:
        tmp = Path(tmp)
        shard = make_shard(tmp / "shard", args.videos, 2, cfg["pretrain"]["img_size"], 0)
        log = tmp / "pretrain.log"
        rc_full, _ = run(params, shard, tmp / "full", log)
        rc_stop, sent_at = run(params, shard, tmp / "resumed", log, stop_after=args.stop_after)
        state_saved = (tmp / "resumed" / "state" / "last.pt").is_file()
        rc_resume, _ = run(params, shard, tmp / "resumed", log)
        ok = rc_full == 0 and rc_stop == EXIT_REQUEUE and state_saved and rc_resume == 0
        diff = max_weight_diff(tmp / "full" / "checkpoint.pt", tmp / "resumed" / "checkpoint.pt") if ok else None
        run_json = tmp / "resumed" / "run.json"
        resumed_info = json.loads(run_json.read_text()).get("resumed") if run_json.is_file() else None
        result = {
            "benchmark": "resume_check", "device": args.device,
            "device_name": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
            "torch": torch.__version__, "compile": args.compile, "channels_last": args.channels_last,
            "epochs": args.epochs, "batch_size": args.batch, "width": args.width,
            "exit_uninterrupted": rc_full, "exit_after_sigterm": rc_stop, "sigterm_after_iterations": sent_at,
            "state_saved": state_saved, "exit_resumed": rc_resume, "run_json_resumed": resumed_info,
            "max_abs_weight_diff_vs_uninterrupted": diff, "ok": ok,
            "log_tail": log.read_text()[-3000:] if not ok else None,
        }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    return result


if __name__ == "__main__":
    sys.exit(0 if main()["ok"] else 1)
