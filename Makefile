# Two commands on a fresh machine: `make run` (install + start the whole service) and
# `make test` (install + run the tests). Both create ./.venv on first use. `make lint`: ruff and mypy.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: run test lint bench install clean

$(VENV)/.installed-test: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

$(VENV)/.installed-lint: $(VENV)/.installed-test
	$(PY) -m pip install --quiet -e '.[lint]'
	touch $@

$(VENV)/.installed-bench: $(VENV)/.installed-test
	$(PY) -m pip install --quiet -e '.[bench]'
	touch $@

install: $(VENV)/.installed-test

run: install
	$(VENV)/bin/dnnq up $(ARGS)

test: install
	bash scripts/install-browser || true
	$(PY) -m pytest $(PYTEST_ARGS)

lint: $(VENV)/.installed-lint
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	MYPY=$(VENV)/bin/mypy scripts/typecheck

bench: $(VENV)/.installed-bench
	$(PY) -m bench $(ARGS)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
