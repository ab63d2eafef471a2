"""SynthFaces rendering throughput (images/s) -> benchmarks/synth.json.

Times (1) the renderer alone (``render_face`` on a few identities, static meshes cached, as in a
dataset where every identity has many images), split into the first image of an identity (mesh
build) and the following ones, and (2) ``generate`` of whole datasets with 1 and 2 worker processes
(rendering, PNG and .pts writing, manifests). Both wall-clock and process CPU seconds are reported:
on a shared machine the CPU time is the stable number. Optionally (``--full``) it generates all five
datasets with the default config and reports the total.

Usage: PYTHONPATH=src .venv/bin/python benchmarks/synth.py [--config .scratch/config-synth.yaml]
       [--n 200] [--workers 1 2] [--full] [--out benchmarks/synth.json]
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

from pclbench.core.config import from_dict
from pclbench.data import synth
from pclbench.data import synth_render as sr


def _cpu_all() -> float:
    """CPU seconds of this process and its finished children (worker pools)."""
    s = resource.getrusage(resource.RUSAGE_SELF)
    c = resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime


def bench_render(cfg: synth.SynthConfig, n: int) -> dict:
    rng = np.random.default_rng(0)
    ids = [sr.sample_identity(rng) for _ in range(4)]
    scenes = [sr.sample_scene(rng, tuple(cfg.face_scale), cfg.center_jitter) for _ in range(n)]
    t0, c0 = time.perf_counter(), time.process_time()
    for i, idt in enumerate(ids):
        sr.render_face(idt, {}, 0.0, 0.0, 0.0, scenes[i], cfg.image_size, cfg.supersample)
    first = ((time.perf_counter() - t0) / len(ids), (time.process_time() - c0) / len(ids))
    t0, c0 = time.perf_counter(), time.process_time()
    for i in range(n):
        aus = synth.expression_aus(rng, int(rng.integers(7)), tuple(cfg.expression_intensity))
        ypr = rng.uniform(-1, 1, 3) * [cfg.max_yaw, cfg.max_pitch, cfg.max_roll]
        sr.render_face(ids[i % 4], aus, *ypr, scenes[i], cfg.image_size, cfg.supersample)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {
        "n": n, "image_size": cfg.image_size, "supersample": cfg.supersample,
        "first_image_of_identity_ms": {"wall": 1e3 * first[0], "cpu": 1e3 * first[1]},
        "per_image_ms": {"wall": 1e3 * wall / n, "cpu": 1e3 * cpu / n},
        "images_per_s_one_core": {"wall": n / wall, "cpu": n / cpu},
    }


def bench_generate(cfg_dict: dict, workers: list[int], root: Path) -> list[dict]:
    out = []
    cfg = from_dict(synth.SynthConfig, cfg_dict, "synth")
    for w in workers:
        t0, c0 = time.perf_counter(), _cpu_all()
        meta = synth.generate("synth_expression", root / f"expr_w{w}", cfg, seed=0, workers=w)
        wall, cpu = time.perf_counter() - t0, _cpu_all() - c0
        out.append({"dataset": "synth_expression", "workers": w, "n_images": meta["n_images"], "wall_s": wall,
                    "cpu_s": cpu, "images_per_s_wall": meta["n_images"] / wall,
                    "cpu_ms_per_image": 1e3 * cpu / meta["n_images"]})
    return out


def bench_full(cfg_dict: dict, workers: int, root: Path) -> dict:
    cfg = from_dict(synth.SynthConfig, cfg_dict, "synth")
    res = {}
    t_all, c_all = time.perf_counter(), _cpu_all()
    for name in synth.DATASETS:
        t0, c0 = time.perf_counter(), _cpu_all()
        meta = synth.generate(name, root / name, cfg, seed=cfg.seed, workers=workers)
        res[name] = {"n_images": meta["n_images"], "wall_s": time.perf_counter() - t0, "cpu_s": _cpu_all() - c0}
    res["total"] = {"n_images": sum(r["n_images"] for r in res.values()), "wall_s": time.perf_counter() - t_all,
                    "cpu_s": _cpu_all() - c_all, "workers": workers}
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default=".scratch/config-synth.yaml", help="YAML with a `synth` section")
    ap.add_argument("--n", type=int, default=200, help="renders for the renderer-only timing")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--full", action="store_true", help="also generate all five datasets (default sizes)")
    ap.add_argument("--out", default="benchmarks/synth.json")
    args = ap.parse_args()
    full_cfg = yaml.safe_load(Path(args.config).read_text())["synth"]
    cfg = from_dict(synth.SynthConfig, full_cfg, "synth")
    small = copy.deepcopy(full_cfg)
    small["expression"].update(n_identities_train=20, n_identities_test=5, images_per_class_train=40,
                               images_per_class_test=5)
    report = {
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "loadavg_at_start": os.getloadavg()},
        "render": bench_render(cfg, args.n),
    }
    with tempfile.TemporaryDirectory() as tmp:
        report["generate"] = bench_generate(small, args.workers, Path(tmp))
        if args.full:
            report["full_default"] = bench_full(full_cfg, max(args.workers), Path(tmp) / "full")
    report["machine"]["loadavg_at_end"] = os.getloadavg()
    out = Path(args.out)
    tmp_out = out.with_name(f".{out.name}.tmp")
    tmp_out.write_text(json.dumps(report, indent=2) + "\n")
    os.replace(tmp_out, out)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
