# virtkit: `make run` boots the default guest, `make test` runs the test suite.
# Each target installs what it needs (Debian packages, a venv, the AOT-compiled RISC-V core, guest images).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: run test host-run host-test venv engine engine-run engine-test web lint bench clean

# `make run` installs what running needs; `make test` also the peers tests and benchmarks compare against.
run: host-run venv engine-run
	$(VENV)/bin/virtkit run

test: host-test venv engine-test web
	$(VENV)/bin/ruff check .
	$(PY) -m pytest $(PYTEST_ARGS)

# the web console's front-end assets (xterm.js) from the npm registry, with their licences
web:
	@bash scripts/vendor-web.sh

host-run:
	@bash scripts/setup-host.sh run

host-test:
	@bash scripts/setup-host.sh test

venv: $(VENV)/.stamp

$(VENV)/.stamp: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

# The RISC-V core compiled ahead of time (minutes the first time, cached in ~/.cache/virtkit/aot after):
# `virtkit run` then starts without importing Numba. A failed build is not fatal: runs fall back to Numba.
engine: venv
	-$(VENV)/bin/virtkit engine build
	@$(PY) -m compileall -q src/virtkit  # bytecode even where PYTHONDONTWRITEBYTECODE is set (~0.1 s per start)

engine-run: host-run engine

engine-test: host-test engine

lint: venv
	$(VENV)/bin/ruff check .

bench: host-test venv engine
	@for b in bench/*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache .ruff_cache
