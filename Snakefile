# pclbench: raw datasets -> landmark alignment -> PCL pretraining -> frozen features -> linear probes
# -> comparison tables. Everything the DAG needs comes from config/config.yaml (validated first thing
# in workflow/rules/common.smk); every rule is one call into the package: `python -m pclbench <stage>`.
#   snakemake --cores all                       the offline default (SynthFaces)
#   snakemake --cores all --configfile config/paper.yaml --profile slurm    the paper's settings on a cluster
from snakemake.utils import min_version

min_version("8.0")


configfile: f"{workflow.basedir}/config/config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/align.smk"
include: "workflow/rules/pretrain.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/report.smk"


rule all:
    default_target: True
    input:
        all_targets(),


# Tables, figures and contact sheets take seconds of CPU on small files: on a cluster they run on the
# submitting node instead of waiting in the queue (Snakemake docs, "Rules > Local rules").
localrules:
    all,
    tables,
    figure_bars,
    figure_curves,
    figure_swap_grid,
    figure_embedding,
    contact_sheet,
