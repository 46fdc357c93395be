# virtkit: `make run` boots the default guest, `make test` runs the test suite.
# Each target installs what it needs (Debian packages, a venv, the AOT-compiled RISC-V core, guest images).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: run test setup host venv engine lint bench clean

run: setup engine
	$(VENV)/bin/virtkit run

test: setup engine
	$(VENV)/bin/ruff check .
	$(PY) -m pytest $(PYTEST_ARGS)

setup: host venv

host:
	@bash scripts/setup-host.sh

venv: $(VENV)/.stamp

$(VENV)/.stamp: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

# The RISC-V core compiled ahead of time (minutes the first time, cached in ~/.cache/virtkit/aot after):
# `virtkit run` then starts without importing Numba. A failed build is not fatal: runs fall back to Numba.
engine: setup
	-$(VENV)/bin/virtkit engine build
	@$(PY) -m compileall -q src/virtkit  # bytecode even where PYTHONDONTWRITEBYTECODE is set (~0.1 s per start)

lint: venv
	$(VENV)/bin/ruff check .

bench: setup
	@for b in bench/*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache .ruff_cache
