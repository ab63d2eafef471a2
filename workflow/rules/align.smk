# align: raw dataset split -> landmark-aligned uint8 shard (stage 2, docs/architecture.md).
# align.parts == 1 (default): one job per split (rule align), resumable through its chunk files.
# align.parts > 1: scatter/gather. align_part jobs compute contiguous chunk ranges into
# <aligned>/<dataset>/<split>.parts/ (in parallel, e.g. one per cluster GPU node); align_merge gathers
# them into the same shard a single job would write (byte-identical images, landmarks and manifest).

ALIGN_PARTS = config["align"]["parts"]


if ALIGN_PARTS == 1:

    rule align:
        """Landmarks -> similarity transform to the template -> uint8 shard + manifest + QC report."""
        input:
            f"{RAW}/{{dataset}}",
        output:
            directory(f"{ALIGNED}/{{dataset}}/{{split}}"),
        log:
            f"{LOGS}/align/{{dataset}}/{{split}}.log",
        threads: 2
        params:
            cfg=lambda w: stage_params("align", dataset=w.dataset),
        shell:
            "{PCLBENCH:q} align --params {params.cfg:q} --raw {input:q} --dataset {wildcards.dataset:q} "
            "--split {wildcards.split:q} --workers {threads:q} --out {output:q} --log {log:q}"

else:

    rule align_part:
        """Scatter: chunk range {part} of ALIGN_PARTS of one split (finished chunks are kept on reruns)."""
        input:
            f"{RAW}/{{dataset}}",
        output:
            temp(f"{ALIGNED}/{{dataset}}/{{split}}.part-{{part}}-of-{ALIGN_PARTS}.json"),
        log:
            f"{LOGS}/align/{{dataset}}/{{split}}.part-{{part}}.log",
        wildcard_constraints:
            part="[0-9]+",
        threads: 2
        params:
            cfg=lambda w: stage_params("align", dataset=w.dataset),
            out=lambda w: f"{ALIGNED}/{w.dataset}/{w.split}",
            parts=ALIGN_PARTS,
        shell:
            "{PCLBENCH:q} align --params {params.cfg:q} --raw {input:q} --dataset {wildcards.dataset:q} "
            "--split {wildcards.split:q} --workers {threads:q} --out {params.out:q} --part {wildcards.part:q} "
            "--parts {params.parts:q} --done {output:q} --log {log:q}"

    rule align_merge:
        """Gather: every chunk of the split -> uint8 shard + manifest + QC report."""
        input:
            raw=f"{RAW}/{{dataset}}",
            parts=lambda w: [
                f"{ALIGNED}/{w.dataset}/{w.split}.part-{i}-of-{ALIGN_PARTS}.json" for i in range(ALIGN_PARTS)
            ],
        output:
            directory(f"{ALIGNED}/{{dataset}}/{{split}}"),
        log:
            f"{LOGS}/align/{{dataset}}/{{split}}.merge.log",
        params:
            cfg=lambda w: stage_params("align", dataset=w.dataset),
        shell:
            "{PCLBENCH:q} align --params {params.cfg:q} --raw {input.raw:q} --dataset {wildcards.dataset:q} "
            "--split {wildcards.split:q} --merge --out {output:q} --log {log:q}"
