# Getting each dataset into the common stage-1 layout under paths.raw:
#   SynthFaces (source synthetic):       generate                              -> RAW/<dataset>
#   real datasets (source url | manual): acquire -> RECEIPTS/<dataset>.receipt.json -> prepare -> RAW/<dataset>
# SOURCES (paths.sources) and RECEIPTS (paths.receipts, default <results>/receipts) are defined in
# common.smk. Nothing is written under SOURCES once a dataset is in place: it may be read-only storage.

REAL = [name for name, d in DATASETS.items() if d["source"] in ("url", "manual")]
# How to transfer (retries, timeouts, lock file, extraction limits), not what: passed outside the
# rule's params so that changing it does not re-run acquire, and through it every parser. SOURCES is
# used directly too: the dataset folder is neither a declared file (Snakemake would delete it before a
# rerun) nor a param (moving it changes no data; the receipt records the files). `snakemake --lint`
# notes both; tests/test_lint.py accepts them for these reasons.
DOWNLOAD_JSON = json.dumps(config.get("download", {}), sort_keys=True, separators=(",", ":"))


rule generate:
    """Render one SynthFaces dataset (images + .pts landmarks + manifests) from the seed."""
    output:
        directory(f"{RAW}/{{dataset}}"),
    log:
        f"{LOGS}/generate/{{dataset}}.log",
    wildcard_constraints:
        dataset="|".join(SYNTHETIC) if SYNTHETIC else "__none__",
    threads: 2
    params:
        cfg=stage_params("generate"),
    shell:
        "{PCLBENCH:q} generate --params {params.cfg:q} --dataset {wildcards.dataset:q} "
        "--out {output:q} --workers {threads:q} --log {log:q}"


rule acquire:
    """Real dataset -> SOURCES/<dataset>/ in its official layout (pclbench.data.acquire).

    url: download every file (resumable, mirrors, checksum / lock-file verified) and unpack the
    archives safely; manual (licence-gated): check what the user placed there, else fail saying what
    to obtain, from whom and where to put it. The only declared output is the receipt: declaring the
    dataset folder would let Snakemake delete a user's licence-gated files before a rerun. Side
    effect: a first download without a published checksum records it in download.lock_file.
    """
    output:
        f"{RECEIPTS}/{{dataset}}.receipt.json",
    # On failure Snakemake prints this log on the console: the instructive message is seen, not buried.
    log:
        f"{LOGS}/acquire/{{dataset}}.log",
    wildcard_constraints:
        dataset="|".join(REAL) if REAL else "__none__",
    params:
        cfg=lambda w: stage_params("acquire", dataset=w.dataset),
    shell:
        "{PCLBENCH:q} acquire --params {params.cfg:q} --download {DOWNLOAD_JSON:q} --dataset {wildcards.dataset:q} "
        "--sources {SOURCES:q} --receipt {output:q} --log {log:q}"


rule prepare:
    """Official layout in SOURCES/<dataset>/ -> stage-1 layout (pclbench.data.parsers, `pclbench prepare`)."""
    input:
        f"{RECEIPTS}/{{dataset}}.receipt.json",
    output:
        directory(f"{RAW}/{{dataset}}"),
    log:
        f"{LOGS}/prepare/{{dataset}}.log",
    wildcard_constraints:
        dataset="|".join(REAL) if REAL else "__none__",
    params:
        cfg=lambda w: stage_params("prepare", dataset=w.dataset),
    shell:
        "{PCLBENCH:q} prepare --params {params.cfg:q} --dataset {wildcards.dataset:q} "
        "--source {SOURCES:q}/{wildcards.dataset:q} --out {output:q} --log {log:q}"


rule contact_sheet:
    """A PNG grid of a raw dataset's images with landmarks and labels, to look at."""
    input:
        f"{RAW}/{{dataset}}",
    output:
        f"{RESULTS}/contact_sheets/{{dataset}}.png",
    log:
        f"{LOGS}/contact_sheet/{{dataset}}.log",
    shell:
        "{PCLBENCH:q} contact-sheet --data {input:q} --out {output:q} --log {log:q}"
