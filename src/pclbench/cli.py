"""``pclbench <stage>``: one subcommand per workflow rule, usable without Snakemake.

Each subcommand takes the configuration either as files (``--config a.yaml --config b.yaml``,
deep-merged in order, the whole result validated against the schema) or as a JSON object holding
only the sections the stage reads (``--params '{"pretrain": {...}}'``), which is how the Snakemake
rules call it: Snakemake then re-runs a rule exactly when one of *its* sections changes. Which
sections a stage reads is declared once (:mod:`pclbench.core.stages`); each subcommand checks that
the config it received holds them. ``--set KEY=VALUE`` (repeatable) sets one dotted key on top of
both (:mod:`pclbench.core.overrides`).
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

from pclbench.core.config import DEFAULT_CONFIG, YTE_KEY, ConfigError, check_config_values, deep_merge
# the stages that look a name up import their function in their handler: each stage's code deps stay its own
from pclbench.core.stages import check_received, fixed_keys


def load_config(files: Sequence[str | Path] = (), params: str | None = None, sets: Sequence[str] = ()) -> dict:
    """Merge config files (default: config/config.yaml), a JSON overlay and ``--set KEY=VALUE``
    overrides (:func:`pclbench.core.overrides.apply_overrides`, typed by the schema); validate the result.

    Refused with a :class:`ConfigError` before the schema: a file holding ``__use_yte__`` (Snakemake
    would render it as a YTE template, evaluating Python in it; snakemake PR #2269), and, anywhere in
    the merged result, NaN / infinities and shell syntax in ``paths.*``
    (:func:`pclbench.core.config.check_config_values`).
    """
    from pclbench.core.overrides import apply_overrides
    from pclbench.core.schema import load_schema, validate_config

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
        if YTE_KEY in data:
            raise ConfigError(f"config file {path}: top-level key {YTE_KEY} asks for YTE templating, which "
                              f"evaluates Python expressions; pclbench refuses templated configs (plain YAML only)")
        cfg = deep_merge(cfg, data)
    if params is not None:
        try:
            overlay = json.loads(params)
        except json.JSONDecodeError as e:
            raise ConfigError(f"--params is not valid JSON: {e}") from None
        cfg = deep_merge(cfg, overlay)
    if sets:
        cfg = apply_overrides(cfg, sets, load_schema())
    check_config_values(cfg)
    # Only a full file-based config must hold every section; a rule's --params holds its own.
    validate_config(cfg, partial=not files)
    return cfg


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", action="append", default=[], metavar="YAML",
                   help="config file(s), merged in order (default: config/config.yaml)")
    p.add_argument("--params", default=None, metavar="JSON",
                   help="JSON object with config sections, merged after the files (used by the workflow rules)")
    p.add_argument("--set", action="append", default=[], dest="sets", metavar="KEY=VALUE",
                   help="set one config key (dotted path, e.g. pcl.n_negatives=16; VALUE is YAML, typed by the "
                        "config schema), merged last; repeatable")


def cmd_validate(args) -> int:
    load_config(args.config, args.params, args.sets)
    print("config OK")
    return 0


def cmd_generate(args) -> int:
    from pclbench.data import synth

    cfg = load_config(args.config, args.params, args.sets)
    check_received(cfg, "generate", "pclbench generate", fixed_keys("generate"))
    from pclbench.core.config import from_dict

    scfg = from_dict(synth.SynthConfig, cfg["synth"], "synth")
    if args.dataset not in synth.DATASETS:
        raise ConfigError(f"{args.dataset!r} is not a SynthFaces dataset; known: {', '.join(synth.DATASETS)}")
    t0 = time.perf_counter()
    meta = synth.generate(args.dataset, Path(args.out), scfg, seed=cfg["synth"]["seed"], workers=args.workers)
    logging.info("generated %s in %.1f s: %s", args.dataset, time.perf_counter() - t0,
                 {k: v for k, v in meta.items() if k in ("counts", "n_images")})
    return 0


def cmd_acquire(args) -> int:
    """Download + verify + extract (source url) or check what the user placed (source manual)."""
    from pclbench.data.acquire import DatasetNotFound, acquire, download_config, receipts_dir
    from pclbench.data.archive import UnsafeArchive
    from pclbench.data.download import DownloadError

    params = args.params
    if args.download is not None:
        try:
            overlay = {"download": json.loads(args.download)}
            params = json.dumps(deep_merge(json.loads(params) if params else {}, overlay))
        except json.JSONDecodeError as e:
            raise ConfigError(f"--download/--params is not valid JSON: {e}") from None
    cfg = load_config(args.config, params, args.sets)
    entry = cfg.get("datasets", {}).get(args.dataset)
    if entry is None:
        raise ConfigError(f"dataset {args.dataset!r} is not in the config's datasets")
    check_received(cfg, "acquire", "pclbench acquire", fixed_keys("acquire", args.dataset))
    sources = args.sources or cfg.get("paths", {}).get("sources")
    if not sources:
        raise ConfigError("acquire needs --sources (or paths.sources in the config)")
    dcfg = download_config(cfg)
    if args.receipt:
        receipt = args.receipt
    elif cfg.get("paths", {}).get("receipts") or cfg.get("paths", {}).get("results"):
        # outside SOURCES, which may be read-only storage (pclbench.data.acquire.receipts_dir)
        receipt = f"{receipts_dir(cfg['paths'])}/{args.dataset}.receipt.json"
    else:
        raise ConfigError("acquire needs --receipt (or paths.results / paths.receipts in the config)")
    try:
        acquire(args.dataset, entry, Path(sources), Path(receipt), dcfg, forget_lock=args.forget_lock)
    except (DatasetNotFound, DownloadError, UnsafeArchive) as e:
        print(f"pclbench acquire: {e}", file=sys.stderr)
        return 1
    return 0


def cmd_prepare(args) -> int:
    """A real dataset in its official layout -> the stage-1 layout (pclbench.data.parsers)."""
    from pclbench.core.stages import prepare_keys
    from pclbench.data.parsers import SourceFormatError, SourceLayoutError, prepare_dataset

    cfg = load_config(args.config, args.params, args.sets)
    entry = (cfg.get("datasets") or {}).get(args.dataset)
    if entry is None:
        raise ConfigError(f"dataset {args.dataset!r} is not in the config's datasets "
                          f"(known: {', '.join(sorted(cfg.get('datasets') or {})) or 'none'})")
    check_received(cfg, "prepare", "pclbench prepare", prepare_keys(cfg, args.dataset))
    t0 = time.perf_counter()
    try:
        meta = prepare_dataset(args.dataset, entry, Path(args.source), Path(args.out), config=cfg)
    except (SourceLayoutError, SourceFormatError) as e:
        print(f"pclbench prepare {args.dataset}: {e}", file=sys.stderr)
        return 1
    logging.info("prepared %s in %.1f s: %s", args.dataset, time.perf_counter() - t0, meta.get("splits"))
    return 0


def cmd_contact_sheet(args) -> int:
    from pclbench.data import synth

    synth.contact_sheet(Path(args.data), Path(args.out), n=args.n, seed=args.seed)
    return 0


def cmd_align(args) -> int:
    from pclbench.core.config import from_dict
    from pclbench.align.aligner import AlignConfig, align_split
    from pclbench.data.parsers import SourceFormatError

    cfg = load_config(args.config, args.params, args.sets)
    # the dataset's entry (its crop size) is checked below, where --size does not replace it
    check_received(cfg, "align", "pclbench align", fixed_keys("align"))
    acfg = from_dict(AlignConfig, cfg["align"], "align")
    size = args.size
    if size is None:
        ds = cfg.get("datasets", {}).get(args.dataset)
        if ds is None:
            raise ConfigError(f"dataset {args.dataset!r} is not in the config's datasets and --size was not given")
        size = ds["size"]
    if args.part is not None:  # one scatter job: compute this part's chunks into <out>.parts/
        from pclbench.align.aligner import align_chunks

        parts = args.parts if args.parts is not None else acfg.parts
        try:
            info = align_chunks(Path(args.raw), args.split, Path(args.out), acfg, size=size, workers=args.workers,
                                dataset=args.dataset, part=args.part, parts=parts)
        except SourceFormatError as e:  # e.g. a manifest row leaving the raw folder: file:line, no traceback
            print(f"pclbench align: {e}", file=sys.stderr)
            return 1
        logging.info("align part %d/%d: %d chunk(s) computed, %d reused", args.part + 1, parts,
                     len(info["computed"]), len(info["reused"]))
        if args.done:
            from pclbench.core.io import atomic_write_text

            atomic_write_text(args.done, json.dumps(info) + "\n")
        return 0
    if args.merge:  # the gather job: every chunk -> the shard
        from pclbench.align.aligner import merge_chunks

        try:
            qc = merge_chunks(Path(args.raw), args.split, Path(args.out), acfg, size=size, dataset=args.dataset)
        except (FileNotFoundError, SourceFormatError) as e:  # parts not finished / a bad manifest row: no traceback
            print(f"pclbench align --merge: {e}", file=sys.stderr)
            return 1
    else:
        try:
            qc = align_split(Path(args.raw), args.split, Path(args.out), acfg, size=size, workers=args.workers,
                             dataset=args.dataset)
        except SourceFormatError as e:  # e.g. a manifest row leaving the raw folder: file:line, no traceback
            print(f"pclbench align: {e}", file=sys.stderr)
            return 1
    logging.info("aligned %s/%s: %d kept, %d failed", args.raw, args.split, qc["n_kept"], qc["n_failed"])
    return 0


def cmd_pretrain(args) -> int:
    from pclbench.core.stages import pretrain_keys
    from pclbench.pretrain.trainer import train

    cfg = load_config(args.config, args.params, args.sets)
    check_received(cfg, "pretrain", "pclbench pretrain", pretrain_keys(cfg, args.method))
    train(args.method, Path(args.data), Path(args.out), cfg)
    return 0


def cmd_extract(args) -> int:
    from pclbench.evaluate.extract import evaluate_config, extract

    from pclbench.core.provenance import write_run_info

    cfg = load_config(args.config, args.params, args.sets)
    check_received(cfg, "extract", "pclbench extract", fixed_keys("extract"))
    out = Path(args.out)
    summary = extract(Path(args.checkpoint), Path(args.data), out, evaluate_config(cfg))
    write_run_info(out.parent, "extract", config=cfg, filename=f"{out.stem}.run.json",
                   timings={"total": summary["seconds"]}, summary=summary)
    return 0


def cmd_probe(args) -> int:
    """One (method, benchmark) probe job: every readout x seed -> results/probes/<method>/<benchmark>.json."""
    from pclbench.core.stages import probe_keys
    from pclbench.evaluate import run_benchmark, save_result
    from pclbench.core.provenance import run_info

    cfg = load_config(args.config, args.params, args.sets)
    benches = cfg.get("benchmarks") or {}
    if args.benchmark not in benches:
        raise ConfigError(f"benchmark {args.benchmark!r} is not in the config's benchmarks "
                          f"(has: {', '.join(benches) or 'none'}); --params must hold benchmarks.{args.benchmark}")
    check_received(cfg, "probe", "pclbench probe", probe_keys(cfg, args.benchmark))
    t0 = time.perf_counter()
    seeds = None if args.seed is None else [args.seed + k for k in range(int(cfg["probe"]["n_seeds"]))]
    result = run_benchmark(args.benchmark, benches[args.benchmark], Path(args.features_root),
                           Path(args.aligned_root), Path(args.raw_root), cfg, method=args.method, seeds=seeds)
    if args.checkpoint:
        result["method_info"] = checkpoint_info(Path(args.checkpoint))
    # The result carries its own provenance (config, versions, commit, seeds, time).
    result["provenance"] = run_info("probe", config=cfg, seeds={"probe": result["seeds"]},
                                    timings={"total": time.perf_counter() - t0})
    save_result(result, Path(args.out))
    return 0


def checkpoint_info(path: Path) -> dict:
    """What a table footnote must say about an encoder: method, variant options, training length."""
    from pclbench.pretrain.checkpoint import load_checkpoint

    ck = load_checkpoint(path)
    config = ck.get("config") or {}
    info: dict[str, Any] = {"method": ck.get("method"), "epochs_trained": ck.get("epoch"),
                            "iterations": ck.get("iteration"), "encoder": ck.get("encoder")}
    if ck.get("method") == "pcl" and isinstance(config.get("pcl"), dict):
        # The faithful/fixed switches (docs/method.md §6-7) change results: tables must name them.
        info["variant"] = {k: v for k, v in config["pcl"].items()
                           if isinstance(v, str) and v in ("faithful", "fixed")}
        # the switches PCL reads outside its own section (README "Faithful vs fixed")
        sobel = (config.get("views") or {}).get("sobel_overflow")
        if sobel in ("faithful", "fixed"):
            info["variant"]["views.sobel_overflow"] = sobel
        from pclbench.pretrain.methods import ablation_label

        info["ablation"] = ablation_label(config["pcl"])
    elif isinstance(config.get(ck.get("method")), dict):
        info["settings"] = config[ck["method"]]  # a baseline's own section (simclr, moco, byol)
    unit = (config.get("pretrain") or {}).get("epoch_unit")
    if unit is not None:
        info["epoch_unit"] = unit  # what "epochs_trained" counts (README "Faithful vs fixed")
    if ck.get("imported_from"):
        info["imported_from"] = ck["imported_from"]
    return info


def cmd_tables(args) -> int:
    from pclbench.report.published import load_published
    from pclbench.report.tables import build_tables

    cfg = load_config(args.config, args.params, args.sets)
    check_received(cfg, "tables", "pclbench tables", fixed_keys("tables"))
    not_run = {}
    for item in args.not_run:
        name, sep, reason = item.partition("=")
        if not sep or not name:
            raise ConfigError(f"--not-run {item!r}: expected NAME=REASON (benchmark name, then why it did not run)")
        not_run[name] = reason or "no reason given"
    published = load_published(args.published or cfg["tables"]["published"])
    from pclbench.report.results import load_probe

    results = [load_probe(p) for p in args.results]
    t0 = time.perf_counter()
    paths = build_tables(results, Path(args.out), cfg, not_run=not_run, published=published,
                         metrics_json=args.metrics_json)
    from pclbench.core.provenance import write_run_info

    write_run_info(Path(args.out), "tables", config=cfg, timings={"total": time.perf_counter() - t0},
                   inputs=[str(p) for p in args.results])
    for p in paths:
        logging.info("wrote %s", p)
    return 0


def cmd_figures(args) -> int:
    """Report figures (pclbench.report.figures): bars | curves | swap-grid | embedding."""
    from pclbench.report import figures as F
    from pclbench.core.config import from_dict

    cfg = load_config(args.config, args.params, args.sets)
    stage = f"figure_{args.kind.replace('-', '_')}"
    check_received(cfg, stage, f"pclbench figures {args.kind}", fixed_keys(stage))
    fcfg = from_dict(F.FiguresConfig, cfg["figures"], "figures")
    need = {"curves": ("method", "metrics"), "swap-grid": ("method", "pretrain_dir"),
            "embedding": ("method", "features", "manifest")}.get(args.kind, ())
    absent = [f"--{k.replace('_', '-')}" for k in need if getattr(args, k) is None]
    if absent:
        raise ConfigError(f"figures {args.kind}: missing {', '.join(absent)}")
    if args.kind == "bars":
        from pclbench.report.published import Published
        from pclbench.report.results import load_probe
        from pclbench.report.tables import Comparison

        not_run = dict(item.partition("=")[::2] for item in args.not_run)
        comp = Comparison([load_probe(p) for p in args.results], cfg, not_run, Published({}, []))
        out = Path(args.out)
        for task in args.tasks or comp.tasks:
            if task in comp.tasks:
                F.bar_chart(comp, task, out / f"bars_{task}.png", fcfg.dpi)
            else:
                F.placeholder(out / f"bars_{task}.png", f"{task}: no benchmark of this task", fcfg.dpi)
    elif args.kind == "curves":
        F.training_curves(args.metrics, args.out, args.method, fcfg.curve_prefixes, fcfg.smooth, fcfg.dpi)
    elif args.kind == "swap-grid":
        F.collect_swap_grid(args.pretrain_dir, args.out, args.method, fcfg.dpi)
    elif args.kind == "embedding":
        e = fcfg.embedding
        names = None
        for b in (cfg.get("benchmarks") or {}).values():  # expression class names for the legend
            if b.get("task") == "expression" and e.dataset in ((b.get("train") or {}).get("dataset"),
                                                               (b.get("test") or {}).get("dataset")):
                names = b.get("labels")
        F.embedding_figure(args.features, args.manifest, args.out, args.method, e, names, fcfg.dpi)
    logging.info("wrote figure(s) %s", args.out)
    return 0


def cmd_import_official(args) -> int:
    """Authors' best.pth -> pclbench checkpoint (docs/method.md §1.8, 2.9; see pclbench.pretrain.import_official)."""
    from pclbench.pretrain.checkpoint import CheckpointError
    from pclbench.pretrain.import_official import import_official

    cfg = load_config(args.config, args.params, args.sets)
    check_received(cfg, "import_official", "pclbench import-official", fixed_keys("import_official"))
    try:
        record = import_official(Path(args.src), Path(args.dst), cfg)
    except ValueError as e:  # refused by torch (CheckpointError) or not the authors' layout: a message
        raise CheckpointError(f"import-official: {e}") from e
    logging.info("imported %s (epoch %s, sha256 %s) -> %s", args.src, record["epoch"], record["sha256"][:12],
                 args.dst)
    for note in record["notes"]:
        logging.info("note: %s", note)
    return 0


def cmd_dvc_yaml(args) -> int:
    from pclbench.core.dvc_export import write_dvc_yaml

    write_dvc_yaml(Path(args.out), configfiles=args.configfile, per_job=args.per_job)
    return 0


def cmd_schema(args) -> int:
    from pclbench.core import schema_gen

    if not args.check:
        print(f"wrote {schema_gen.write(args.out)}")
        return 0
    stale = schema_gen.check(args.out)
    print("\n".join(stale) or f"{args.out} is up to date", file=sys.stderr if stale else sys.stdout)
    return 1 if stale else 0


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

    p = sub.add_parser("acquire", help="download + verify + extract a real dataset (url), or check the "
                                       "licence-gated files you placed (manual); writes a receipt JSON")
    _add_config_args(p)
    p.add_argument("--dataset", required=True)
    p.add_argument("--sources", default=None,
                   help="the dataset goes to SOURCES/<dataset>/ (default: the config's paths.sources)")
    p.add_argument("--receipt", default=None,
                   help="receipt JSON to write: files, sizes, digests (default: RECEIPTS/<dataset>.receipt.json, "
                        "RECEIPTS = the config's paths.receipts, else <paths.results>/receipts: outside SOURCES, "
                        "which may be read-only)")
    p.add_argument("--download", default=None, metavar="JSON",
                   help="the `download` section as JSON, merged last; the workflow passes it here rather than "
                        "in --params because transfer settings (retries, timeouts) do not change the data and "
                        "must not re-run the dataset's parsing")
    p.add_argument("--forget-lock", action="store_true",
                   help="first delete this dataset's entries from the lock file (download.lock_file), e.g. one "
                        "recorded from a bad download; the files are then checked and recorded anew")
    p.set_defaults(func=cmd_acquire)

    p = sub.add_parser("prepare", help="convert a real dataset from its official release layout to the stage-1 layout")
    _add_config_args(p)
    p.add_argument("--dataset", required=True, help="datasets.<name> entry (its `parser` is run)")
    p.add_argument("--source", required=True, help="the release in its official layout (paths.sources/<name>)")
    p.add_argument("--out", required=True, help="stage-1 dataset folder to write (paths.raw/<name>)")
    p.set_defaults(func=cmd_prepare)

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
    p.add_argument("--part", type=int, default=None,
                   help="scatter job: compute only chunk range PART (0-based) of --parts into <out>.parts/")
    p.add_argument("--parts", type=int, default=None, help="number of scatter jobs (default: align.parts)")
    p.add_argument("--done", default=None, help="with --part: marker file written when the part is done")
    p.add_argument("--merge", action="store_true", help="gather job: merge all finished chunks into --out")
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

    p = sub.add_parser("probe", help="every readout x seed of one benchmark's probe on cached features -> JSON")
    _add_config_args(p)
    p.add_argument("--benchmark", required=True, help="entry of the config's benchmarks")
    p.add_argument("--method", required=True)
    p.add_argument("--features-root", required=True, help="results/features/<method> (holds <dataset>/<split>.npz)")
    p.add_argument("--aligned-root", required=True, help="aligned data root (holds <dataset>/<split>/manifest.csv)")
    p.add_argument("--raw-root", required=True, help="raw data root (verification: <dataset>/pairs.csv)")
    p.add_argument("--checkpoint", default=None, help="the encoder's checkpoint (records the method variant)")
    p.add_argument("--seed", type=int, default=None,
                   help="first probe seed (default: the config's `seed`); seeds = seed + k, k < probe.n_seeds")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_probe)

    p = sub.add_parser("tables", help="probe JSONs -> Markdown/CSV/LaTeX/HTML tables per task, ablation, summary")
    _add_config_args(p)
    p.add_argument("--out", required=True, help="folder of the tables")
    p.add_argument("--not-run", action="append", default=[], metavar="NAME=REASON",
                   help="a benchmark that did not run and why (its cells say 'not run'); repeatable")
    p.add_argument("--published", default=None,
                   help="published-results YAML (default: the config's tables.published)")
    p.add_argument("--metrics-json", default=None, help="also write the flat primary-metrics JSON (dvc metrics)")
    p.add_argument("results", nargs="*", help="probe result JSONs (results/probes/<method>/<benchmark>.json)")
    p.set_defaults(func=cmd_tables)

    p = sub.add_parser("figures", help="report figures: bars per task, training curves, swap grid, t-SNE embedding")
    _add_config_args(p)
    p.add_argument("kind", choices=["bars", "curves", "swap-grid", "embedding"])
    p.add_argument("--out", required=True, help="PNG to write (bars: the folder of bars_<task>.png)")
    p.add_argument("--method", default=None, help="curves / swap-grid / embedding: the method drawn")
    p.add_argument("--tasks", nargs="*", default=None, help="bars: tasks to draw (default: those of the results)")
    p.add_argument("--not-run", action="append", default=[], metavar="NAME=REASON", help="bars: benchmarks not run")
    p.add_argument("--metrics", default=None, help="curves: the trainer's metrics.csv")
    p.add_argument("--pretrain-dir", default=None, help="swap-grid: results/pretrain/<method>")
    p.add_argument("--features", default=None, help="embedding: stage-4 features .npz")
    p.add_argument("--manifest", default=None, help="embedding: the aligned shard's manifest.csv")
    p.add_argument("results", nargs="*", help="bars: probe result JSONs")
    p.set_defaults(func=cmd_figures)

    p = sub.add_parser("import-official", help="convert an authors' PCL checkpoint (best.pth) into a "
                                               "pclbench checkpoint")
    _add_config_args(p)
    p.add_argument("src", help="the authors' file: {'epoch', 'state_dict': {'module.encoder.*', ...}}")
    p.add_argument("dst", help="pclbench checkpoint to write (e.g. results/pretrain/pcl_official/checkpoint.pt)")
    p.set_defaults(func=cmd_import_official)

    p = sub.add_parser("dvc-yaml", help="write dvc.yaml from the Snakemake workflow's DAG")
    p.add_argument("--out", default="dvc.yaml")
    p.add_argument("--configfile", nargs="+", action="extend", default=[], metavar="YAML",
                   help="override files merged on config/config.yaml, as for `snakemake --configfile`: "
                        "the stages pass them to Snakemake and read params from them")
    p.add_argument("--per-job", action="store_true", help="one stage per Snakemake job (no grouping)")
    p.set_defaults(func=cmd_dvc_yaml)

    p = sub.add_parser("schema", help="write workflow/schemas/config.schema.yaml from wiring.schema.yaml + the "
                                      "section models (pclbench.core.schema_gen)")
    p.add_argument("--out", default="workflow/schemas/config.schema.yaml")
    p.add_argument("--check", action="store_true", help="write nothing; exit 1 when --out is stale")
    p.set_defaults(func=cmd_schema)
    for p in sub.choices.values():
        p.add_argument("--log", default=None, metavar="FILE",
                       help="append this command's output to FILE (the workflow's job log); if FILE cannot be "
                            "written (full disk) the output goes to stderr, and a failure always ends with one "
                            "line on stderr (pclbench.core.joblog)")
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.log is not None:  # the command owns its log file (pclbench.core.joblog: full disks, the final line)
        from pclbench.core.joblog import run_logged

        return run_logged(args.log, args.command, lambda: _run(args))
    return _run(args)


def _run(args) -> int:
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        return args.func(args)
    except ConfigError as e:
        print(f"pclbench: config error: {e}", file=sys.stderr)
        return 2
    except (ValueError, OSError) as e:
        # An unusable checkpoint file (CheckpointError: refused by torch.load(weights_only=True), not a
        # pclbench checkpoint, an oversized encoder spec) or a full disk while saving one (DiskFullError)
        # is the user's to fix: a message, not a traceback; anything else keeps its traceback. Looked up
        # in sys.modules so that commands that never load a checkpoint never import torch for this.
        ck = sys.modules.get("pclbench.pretrain.checkpoint")
        if ck is None or not isinstance(e, (ck.CheckpointError, ck.DiskFullError)):
            raise
        what = "checkpoint error: " if isinstance(e, ck.CheckpointError) else ""
        print(f"pclbench: {what}{e}", file=sys.stderr)
        return 1
