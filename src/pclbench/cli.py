"""``pclbench <stage>``: one subcommand per workflow rule, usable without Snakemake.

Each subcommand takes the configuration either as files (``--config a.yaml --config b.yaml``,
deep-merged in order, the whole result validated against the schema) or as a JSON object holding
only the sections the stage reads (``--params '{"pretrain": {...}}'``), which is how the Snakemake
rules call it: Snakemake then re-runs a rule exactly when one of *its* sections changes.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import yaml

from .config import DEFAULT_CONFIG, ConfigError, deep_merge


def load_config(files: Sequence[str | Path] = (), params: str | None = None) -> dict:
    """Merge config files (default: config/config.yaml) and a JSON overlay; validate the result."""
    from .schema import validate_config

    cfg: dict[str, Any] = {}
    if not files and params is None:
        files = [DEFAULT_CONFIG]
    for f in files:
        path = Path(f)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        with open(path) as fh:
            data = yaml.safe_load(fh) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"config file {path} must hold a mapping at the top level")
        cfg = deep_merge(cfg, data)
    if params is not None:
        try:
            overlay = json.loads(params)
        except json.JSONDecodeError as e:
            raise ConfigError(f"--params is not valid JSON: {e}") from None
        cfg = deep_merge(cfg, overlay)
    # Only a full file-based config must hold every section; a rule's --params holds its own.
    validate_config(cfg, partial=not files)
    return cfg


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", action="append", default=[], metavar="YAML",
                   help="config file(s), merged in order (default: config/config.yaml)")
    p.add_argument("--params", default=None, metavar="JSON",
                   help="JSON object with config sections, merged last (used by the workflow rules)")


def cmd_validate(args) -> int:
    load_config(args.config, args.params)
    print("config OK")
    return 0


def cmd_generate(args) -> int:
    from .data import synth

    cfg = load_config(args.config, args.params)
    from .config import from_dict

    scfg = from_dict(synth.SynthConfig, cfg["synth"], "synth")
    if args.dataset not in synth.DATASETS:
        raise ConfigError(f"{args.dataset!r} is not a SynthFaces dataset; known: {', '.join(synth.DATASETS)}")
    t0 = time.perf_counter()
    meta = synth.generate(args.dataset, Path(args.out), scfg, seed=cfg["synth"]["seed"], workers=args.workers)
    logging.info("generated %s in %.1f s: %s", args.dataset, time.perf_counter() - t0,
                 {k: v for k, v in meta.items() if k in ("counts", "n_images")})
    return 0


def cmd_contact_sheet(args) -> int:
    from .data import synth

    synth.contact_sheet(Path(args.data), Path(args.out), n=args.n, seed=args.seed)
    return 0


def cmd_align(args) -> int:
    from .config import from_dict
    from .data.align import AlignConfig, align_split

    cfg = load_config(args.config, args.params)
    acfg = from_dict(AlignConfig, cfg["align"], "align")
    size = args.size
    if size is None:
        ds = cfg.get("datasets", {}).get(args.dataset)
        if ds is None:
            raise ConfigError(f"dataset {args.dataset!r} is not in the config's datasets and --size was not given")
        size = ds["size"]
    qc = align_split(Path(args.raw), args.split, Path(args.out), acfg, size=size, workers=args.workers)
    logging.info("aligned %s/%s: %d kept, %d failed", args.raw, args.split, qc["n_kept"], qc["n_failed"])
    return 0


def cmd_pretrain(args) -> int:
    from .train import train

    cfg = load_config(args.config, args.params)
    train(args.method, Path(args.data), Path(args.out), cfg)
    return 0


def cmd_extract(args) -> int:
    from .extract import evaluate_config, extract

    from .runinfo import write_run_info

    cfg = load_config(args.config, args.params)
    out = Path(args.out)
    summary = extract(Path(args.checkpoint), Path(args.data), out, evaluate_config(cfg))
    write_run_info(out.parent, "extract", config=cfg, filename=f"{out.stem}.run.json",
                   timings={"total": summary["seconds"]}, summary=summary)
    return 0


def cmd_probe(args) -> int:
    from .probes import run_task, save_result
    from .runinfo import run_info

    cfg = load_config(args.config, args.params)
    t0 = time.perf_counter()
    seed = args.seed if args.seed is not None else cfg["seed"]
    result = run_task(args.task, Path(args.features), Path(args.aligned), Path(args.raw), cfg,
                      seed=seed, method=args.method)
    if args.checkpoint:
        result["method_info"] = checkpoint_info(Path(args.checkpoint))
    # The result carries its own provenance (config, versions, commit, seed, time).
    result["provenance"] = run_info("probe", config=cfg, seeds={"probe": seed},
                                    timings={"total": time.perf_counter() - t0})
    save_result(result, Path(args.out))
    return 0


def checkpoint_info(path: Path) -> dict:
    """What a table footnote must say about an encoder: method, variant options, training length."""
    from .checkpoint import load_checkpoint

    ck = load_checkpoint(path)
    config = ck.get("config") or {}
    info: dict[str, Any] = {"method": ck.get("method"), "epochs_trained": ck.get("epoch"),
                            "iterations": ck.get("iteration"), "encoder": ck.get("encoder")}
    if ck.get("method") == "pcl" and isinstance(config.get("pcl"), dict):
        # The faithful/fixed switches (method doc 6-7) change results: tables must name them.
        info["variant"] = {k: v for k, v in config["pcl"].items()
                           if isinstance(v, str) and v in ("faithful", "fixed")}
        from .methods import ablation_label

        info["ablation"] = ablation_label(config["pcl"])
    elif isinstance(config.get(ck.get("method")), dict):
        info["settings"] = config[ck["method"]]  # a baseline's own section (simclr, moco, byol)
    if ck.get("imported_from"):
        info["imported_from"] = ck["imported_from"]
    return info


def cmd_tables(args) -> int:
    from .tables import build_tables

    cfg = load_config(args.config, args.params)
    results = [json.loads(Path(p).read_text()) for p in args.results]
    t0 = time.perf_counter()
    paths = build_tables(results, Path(args.out), cfg)
    from .runinfo import write_run_info

    write_run_info(Path(args.out), "tables", config=cfg, timings={"total": time.perf_counter() - t0},
                   inputs=[str(p) for p in args.results])
    for p in paths:
        logging.info("wrote %s", p)
    return 0


def cmd_import_official(args) -> int:
    """Authors' best.pth -> pclbench checkpoint (method doc 1.8, 2.9; see pclbench.official)."""
    from .official import import_official

    cfg = load_config(args.config, args.params)
    if "model" not in cfg:
        raise ConfigError("import-official needs the config section 'model' (projection sizes)")
    record = import_official(Path(args.src), Path(args.dst), cfg)
    logging.info("imported %s (epoch %s, sha256 %s) -> %s", args.src, record["epoch"], record["sha256"][:12],
                 args.dst)
    for note in record["notes"]:
        logging.info("note: %s", note)
    return 0


def cmd_dvc_yaml(args) -> int:
    from .dvc_export import write_dvc_yaml

    write_dvc_yaml(Path(args.out), configfiles=args.configfile)
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="pclbench", description=__doc__.splitlines()[0])
    ap.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("validate-config", help="validate the config against the schema")
    _add_config_args(p)
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("generate", help="render one SynthFaces dataset into a raw dataset folder")
    _add_config_args(p)
    p.add_argument("--dataset", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--workers", type=int, default=1)
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("contact-sheet", help="PNG grid of a raw dataset's images, landmarks and labels")
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--n", type=int, default=48)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_contact_sheet)

    p = sub.add_parser("align", help="landmarks -> similarity warp -> uint8 shard + QC report")
    _add_config_args(p)
    p.add_argument("--raw", required=True, help="raw dataset folder")
    p.add_argument("--dataset", required=True)
    p.add_argument("--split", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--size", type=int, default=None, help="crop size (default: datasets.<name>.size)")
    p.add_argument("--workers", type=int, default=1)
    p.set_defaults(func=cmd_align)

    p = sub.add_parser("pretrain", help="pretrain (or initialise) an encoder with a registered method")
    _add_config_args(p)
    p.add_argument("--method", required=True)
    p.add_argument("--data", required=True, help="aligned pretraining shard folder")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_pretrain)

    p = sub.add_parser("extract", help="frozen features of one aligned split -> .npz")
    _add_config_args(p)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_extract)

    p = sub.add_parser("probe", help="linear probe of one task on cached features -> JSON")
    _add_config_args(p)
    p.add_argument("--task", required=True)
    p.add_argument("--method", required=True)
    p.add_argument("--features", required=True, help="folder with <split>.npz")
    p.add_argument("--aligned", required=True, help="aligned dataset folder (with <split>/manifest.csv)")
    p.add_argument("--raw", required=True, help="raw dataset folder (pairs.csv for verification)")
    p.add_argument("--checkpoint", default=None, help="the encoder's checkpoint (records the method variant)")
    p.add_argument("--seed", type=int, default=None, help="probe seed (default: the config's `seed`)")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_probe)

    p = sub.add_parser("tables", help="probe JSONs -> Markdown/CSV tables per task + summary")
    _add_config_args(p)
    p.add_argument("--out", required=True)
    p.add_argument("results", nargs="+")
    p.set_defaults(func=cmd_tables)

    p = sub.add_parser("import-official", help="convert an authors' PCL checkpoint (best.pth) into a "
                                               "pclbench checkpoint")
    _add_config_args(p)
    p.add_argument("src", help="the authors' file: {'epoch', 'state_dict': {'module.encoder.*', ...}}")
    p.add_argument("dst", help="pclbench checkpoint to write (e.g. results/pretrain/pcl_official/checkpoint.pt)")
    p.set_defaults(func=cmd_import_official)

    p = sub.add_parser("dvc-yaml", help="write dvc.yaml from the Snakemake workflow's DAG")
    p.add_argument("--out", default="dvc.yaml")
    p.add_argument("--configfile", action="append", default=[])
    p.set_defaults(func=cmd_dvc_yaml)
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        return args.func(args)
    except ConfigError as e:
        print(f"pclbench: config error: {e}", file=sys.stderr)
        return 2
