# acquire (SynthFaces: generate; real datasets: later issues) -> align


rule generate:
    """Render one SynthFaces dataset (images + .pts landmarks + manifests) from the seed."""
    output:
        directory(f"{RAW}/{{dataset}}"),
    wildcard_constraints:
        dataset="|".join(SYNTHETIC) if SYNTHETIC else "__none__",
    params:
        cfg=params_json("synth"),
    log:
        f"{LOGS}/generate/{{dataset}}.log",
    threads: 2
    shell:
        "{PCLBENCH} generate --params {params.cfg:q} --dataset {wildcards.dataset} "
        "--out {output} --workers {threads} > {log} 2>&1"


rule contact_sheet:
    """A PNG grid of a raw dataset's images with landmarks and labels, to look at."""
    input:
        f"{RAW}/{{dataset}}",
    output:
        f"{RESULTS}/contact_sheets/{{dataset}}.png",
    log:
        f"{LOGS}/contact_sheet/{{dataset}}.log",
    shell:
        "{PCLBENCH} contact-sheet --data {input} --out {output} > {log} 2>&1"


rule align:
    """Landmarks -> similarity transform to the template -> uint8 shard + manifest + QC report."""
    input:
        f"{RAW}/{{dataset}}",
    output:
        directory(f"{ALIGNED}/{{dataset}}/{{split}}"),
    params:
        cfg=lambda w: params_json("align", dataset=w.dataset),
    log:
        f"{LOGS}/align/{{dataset}}/{{split}}.log",
    threads: 2
    shell:
        "{PCLBENCH} align --params {params.cfg:q} --raw {input} --dataset {wildcards.dataset} "
        "--split {wildcards.split} --workers {threads} --out {output} > {log} 2>&1"
