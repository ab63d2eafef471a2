# Two commands on a fresh machine:
#   make run    create .venv, install pinned dependencies, run the whole workflow on the offline default
#   make test   same set-up, then the full test suite (unit tests + the end-to-end workflow test)
# Both are idempotent: the venv is rebuilt only when requirements/constraints/pyproject change.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
CORES ?= all
STAMP := $(VENV)/.pclbench-installed

.PHONY: run test venv dryrun dvc-yaml schema dvc-pull clean-results

venv: $(STAMP)

$(STAMP): requirements.txt constraints.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt -c constraints.txt
	$(PY) -m pip install --quiet --no-deps -e .
	touch $@

run: $(STAMP)
	$(VENV)/bin/snakemake --cores $(CORES)

test: $(STAMP)
	$(PY) -m pytest

dryrun: $(STAMP)
	$(VENV)/bin/snakemake -n

# dvc.yaml from the Snakemake DAG; CONFIGFILES="config/paper.yaml" makes it for override files
# (the stages pass them to Snakemake and read params from them; README "DVC").
dvc-yaml: $(STAMP)
	$(PY) -m pclbench dvc-yaml --out dvc.yaml $(if $(CONFIGFILES),--configfile $(CONFIGFILES))

# workflow/schemas/config.schema.yaml = wiring.schema.yaml (hand-written) + the schema of every section
# model (pclbench.core.schema_gen): run after adding or changing a config key; tests fail on a stale file.
schema: $(STAMP)
	$(PY) -m pclbench schema --out workflow/schemas/config.schema.yaml

# Fetch everything from the DVC remote, then re-stamp the outputs in DAG order (dvc pull gives them
# new, unordered mtimes; snakemake --touch runs nothing) so that `snakemake -n` has nothing to do.
dvc-pull: $(STAMP)
	$(VENV)/bin/dvc pull
	$(VENV)/bin/snakemake --touch --cores 1

clean-results:
	rm -rf results/ data/ .snakemake/
