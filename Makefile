# Idempotent set-up: `make test` and `make demo` create .venv once and reuse it.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch/torchvision releases that are known to work together (timm needs a matching pair).
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
EXTRAS ?= cpu,dev,demo,baselines,docs,register,tensorboard

.PHONY: install test test-all demo bench docs lint clean

$(VENV)/.installed: pyproject.toml Makefile longiseg/_version.py  # the version: the installed metadata says it
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH_SPEC)
	$(PY) -m pip install --quiet -e ".[$(EXTRAS)]"
	touch $@

install: $(VENV)/.installed

test: install
	$(PY) -m pytest -q

test-all: install
	$(PY) -m pytest -q --runslow

demo: install
	$(VENV)/bin/longiseg demo --output demo_output --overwrite

bench: install
	$(PY) benchmarks/run_all.py --quick

docs: install
	$(VENV)/bin/mkdocs build --strict

lint: install
	$(VENV)/bin/ruff check longiseg tests benchmarks examples

clean:
	rm -rf $(VENV) build dist *.egg-info site
