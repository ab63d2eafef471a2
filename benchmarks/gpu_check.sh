#!/usr/bin/env bash
# GPU check of the speed benchmarks, one call on a CUDA machine, about 3-6 minutes:
#
#   1. train_step.py at the paper's shapes (config/paper.yaml: width 64, 64 px, pfe and face steps on
#      256 images, pose step on 10 x (2 + 100)), bf16 autocast, channels_last, WITH the reference
#      path (the authors' per-image PIL pipeline, 6 DataLoader workers per loader, 2.10 / 3.4)
#   2. the same shapes WITHOUT the reference path, with torch.compile (default mode), then with
#      mode reduce-overhead (CUDA graphs)
#   3. resume_check.py on CUDA: the trainer process stopped by SIGTERM exits 75 and resumes to the end
#   4. probe.py on CUDA (cached features vs re-encoding every epoch), paper width
#
# Step 1 also writes torch.profiler's operator table (profile_cuda.txt). Environment: RESUME_ARGS =
# extra options of resume_check.py (default --channels-last; e.g. "--channels-last --compile
# reduce-overhead"); PROBE=0 skips step 4.
#
# Writes train_step_cuda.json, train_step_cuda_compile.json, probe_cuda.json and one log per run into
# $OUT if set, else benchmarks/gpu_check/. Runs every step even after a failure; exits non-zero if
# any step failed (or no GPU is visible). Python: $PYTHON, else python3 (the torch image's).
#
#   bash benchmarks/gpu_check.sh
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
DEST=${OUT:-benchmarks/gpu_check}
mkdir -p "$DEST"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
WORKERS=${WORKERS:-6}
status=0

if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    echo "gpu_check: no CUDA device visible to $PY" >&2
    exit 2
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null | tee "$DEST/gpu.txt"

step() {  # step NAME TIMEOUT_S CMD...
    local name=$1 limit=$2
    shift 2
    local t0=$SECONDS
    echo "== $name: $*"
    timeout "$limit" "$@" > "$DEST/$name.log" 2>&1
    local rc=$?
    echo "== $name: rc=$rc in $((SECONDS - t0)) s"
    if [ "$rc" -ne 0 ]; then
        tail -n 40 "$DEST/$name.log"
        status=1
    fi
}

PAPER=(--config config/config.yaml --config config/paper.yaml --device cuda --amp on --threads 8)
step train_step_cuda 180 "$PY" benchmarks/train_step.py "${PAPER[@]}" --channels-last \
    --workers "$WORKERS" --profile "$DEST/profile_cuda.txt" --out "$DEST/train_step_cuda.json"
step train_step_cuda_compile 210 "$PY" benchmarks/train_step.py "${PAPER[@]}" --channels-last --compile \
    --no-reference --warmup 2 --out "$DEST/train_step_cuda_compile.json"
step train_step_cuda_graphs 240 "$PY" benchmarks/train_step.py "${PAPER[@]}" --channels-last \
    --compile reduce-overhead --no-reference --warmup 3 --out "$DEST/train_step_cuda_graphs.json"
# shellcheck disable=SC2086  # RESUME_ARGS is a list of options
step resume_cuda 200 "$PY" benchmarks/resume_check.py --device cuda ${RESUME_ARGS:---channels-last} \
    --out "$DEST/resume_cuda.json"
[ "${PROBE:-1}" = 1 ] && step probe_cuda 60 "$PY" benchmarks/probe.py --device cuda --n 4096 --width 64 --epochs 3 --batch-size 256 \
    --out "$DEST/probe_cuda.json"

# the headline numbers, from the JSON written above
"$PY" - "$DEST" <<'EOF' || status=1
import json, sys
from pathlib import Path
d = Path(sys.argv[1])
for name in ("train_step_cuda", "train_step_cuda_compile", "train_step_cuda_graphs"):
    p = d / f"{name}.json"
    if not p.is_file():
        print(f"{name}: no JSON"); continue
    r = json.loads(p.read_text())
    o = r["ours"]
    line = (f"{name}: {r['device_name']}, ours {o['seconds_per_iteration']['median'] * 1e3:.1f} ms/it "
            f"({o['images_per_second']:.0f} img/s, peak {o['peak_memory_bytes'] / 2**30:.2f} GiB; steps "
            + ", ".join(f"{k} {v['median'] * 1e3:.1f}" for k, v in o["seconds_per_step"].items()) + " ms)")
    if r["reference"]:
        ref = r["reference"]
        line += (f"; reference ({ref['workers']} workers x 3 loaders) "
                 f"{ref['seconds_per_iteration']['median'] * 1e3:.1f} ms/it, ratio {r['ratio_reference_over_ours']:.1f}x")
    print(line)
p = d / "resume_cuda.json"
if p.is_file():
    r = json.loads(p.read_text())
    print(f"resume_cuda (compile {r['compile']}, channels_last {r['channels_last']}): ok={r['ok']} exits {r['exit_uninterrupted']}/{r['exit_after_sigterm']}/{r['exit_resumed']}, "
          f"max |dW| vs uninterrupted {r['max_abs_weight_diff_vs_uninterrupted']}")
p = d / "probe_cuda.json"
if p.is_file():
    r = json.loads(p.read_text())
    print(f"probe_cuda: speedup per epoch {r['speedup_per_epoch']:.1f}x, max |dW| {r['final_weight_max_abs_diff']:.2e}")
EOF
echo "gpu_check: $([ $status -eq 0 ] && echo OK || echo FAILED); outputs in $DEST"
exit $status
