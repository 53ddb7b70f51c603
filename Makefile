# mmcourse — `make test` and `make course` work on a fresh clone: both run `setup` first.
SHELL := /bin/bash
PYTHON ?= python3
PROFILE ?= default
SEED ?= 0

# Use an active conda environment (not `base`) when there is one, else a local .venv.
ifneq ($(CONDA_PREFIX),)
ifneq ($(CONDA_DEFAULT_ENV),base)
USE_CONDA := 1
endif
endif
ifdef USE_CONDA
ENV_DIR := $(CONDA_PREFIX)
else
ENV_DIR := $(CURDIR)/.venv
endif
BIN := $(ENV_DIR)/bin
STAMP := $(ENV_DIR)/.mmcourse-installed
export PATH := $(BIN):$(PATH)
export PYTHONUNBUFFERED := 1
# Waiting OpenMP threads spin 1,000 times instead of 300,000 before they sleep: on a busy 2-core machine
# the long spin made chapters 5-14x slower (benchmarks/bench_threads.py; mmcourse.utils.configure_threads).
export GOMP_SPINCOUNT ?= 1000
# Jupyter prints a warning about platformdirs migration otherwise.
export JUPYTER_PLATFORM_DIRS := 1

NOTEBOOKS := $(sort $(wildcard notebooks/[0-9][0-9]_*.ipynb))

.PHONY: setup test unit torchrun notebooks-smoke grading browser book assignments grade course verify lab execute clean bench gpu-check

setup: $(STAMP)

# Redone whenever requirements.txt or pyproject.toml change.
$(STAMP): requirements.txt pyproject.toml
ifndef USE_CONDA
	test -x $(BIN)/python || $(PYTHON) -m venv $(ENV_DIR)
endif
	$(BIN)/python -m pip install --quiet --progress-bar off -r requirements.txt 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
	$(BIN)/python -m pip install --quiet --progress-bar off --no-deps --no-build-isolation -e .
	touch $@

## make test: unit tests, the multi-process tests, every notebook top to bottom in the smoke profile (nbval),
## the assignments graded, then the website built and the reader's path driven in a real browser.
test: setup unit torchrun notebooks-smoke grading browser

unit: setup
	$(BIN)/python -m pytest -q tests --ignore=tests/grading --ignore=tests/distributed --ignore=tests/browser

## make torchrun: the tests that launch `torchrun --nproc-per-node=2` (gloo on the CPU; two launches, chapter 15).
torchrun: setup
	$(BIN)/python -m pytest -q -p no:cacheprovider tests/distributed

## make grading: every assignment's variants (solved, released, partial, wrong) and broken submissions, graded.
grading: setup
	$(BIN)/python -m pytest -q -p no:cacheprovider tests/grading

## make assignments: the student copy of every assignment (solutions and hidden tests removed) in build/classroom/release.
assignments: setup
	$(BIN)/python -m classroom release

## make grade SUBMISSIONS=dir [TIMEOUT=s]: autograde dir/<student>/<assignment>/; grades and feedback in build/classroom.
TIMEOUT ?= 60
grade: setup
	@test -n "$(SUBMISSIONS)" || { echo "usage: make grade SUBMISSIONS=dir (dir/<student>/<assignment>/<assignment>.ipynb)" >&2; exit 2; }
	$(BIN)/python -m classroom --timeout $(TIMEOUT) grade $(SUBMISSIONS)

## make browser: Chromium (Debian's, through Playwright) reads the built site and runs chapter 00 and an
## assignment in JupyterLab; screenshots in build/browser/. Skips without Chromium unless CI=true.
browser: setup book
	$(BIN)/python -m pytest -q -p no:cacheprovider tests/browser

## make book: the course as a static website in build/site/ (open build/site/index.html), from the committed
## notebooks, offline, nothing executed; fails on any Sphinx warning or broken internal link.
book: setup
	$(BIN)/python -m mmcourse.site

notebooks-smoke: setup
	MMCOURSE_PROFILE=smoke MMCOURSE_PROGRESS=0 $(BIN)/python -m pytest -q --nbval-lax \
		--nbval-sanitize-with notebooks/sanitize.cfg -p no:cacheprovider $(NOTEBOOKS)

## make course PROFILE=default|smoke|full: run every notebook with papermill, write build/RESULTS.md.
course: setup
	MMCOURSE_PROGRESS=0 $(BIN)/python -m mmcourse.course --profile $(PROFILE) --seed $(SEED)

## make verify: every notebook in the default profile with its strict checks; fails on any missed target.
# For maintainers and the GPU machine; CI does not run it (a 2-core CI machine needs over 40 minutes).
verify: setup
	MMCOURSE_PROGRESS=0 $(BIN)/python -m mmcourse.course --profile default --seed $(SEED) --verify

## make execute: re-run the committed notebooks in place (default profile) so they carry real outputs.
execute: setup
	MMCOURSE_PROFILE=default MMCOURSE_PROGRESS=0 $(BIN)/jupyter nbconvert --to notebook --execute --inplace \
		--ExecutePreprocessor.timeout=900 $(NOTEBOOKS)

# Jupyter refuses to run as root unless told to (containers often run as root).
LAB_FLAGS ?= $(if $(filter 0,$(shell id -u)),--allow-root)

# make lab [LAB_DIR=folder] [LAB_ARGS="--port=8899 ..."]: the browser test starts it this way on a copy.
LAB_DIR ?= notebooks/
LAB_ARGS ?=
lab: setup
	$(BIN)/jupyter lab $(LAB_FLAGS) $(LAB_ARGS) $(LAB_DIR)

bench: setup
	$(BIN)/python benchmarks/bench_generate.py
	$(BIN)/python benchmarks/bench_training.py
	$(BIN)/python benchmarks/bench_data_loading.py --threads 1

## make gpu-check: the pipeline on CUDA in the full profile, its cost and MFU, written to build/GPU_REPORT.md.
# No setup step: the lent GPU machine has torch but nothing can be installed there, so the checkout is the path.
gpu-check:
	PYTHONPATH=$(CURDIR) $(PYTHON) scripts/gpu_check.py

clean:
	rm -rf build .pytest_cache
