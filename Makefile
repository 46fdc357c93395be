# virtkit: `make run` boots the default guest, `make test` runs the test suite.
# Each target installs what it needs (Debian packages, a venv, guest images).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: run test setup host venv lint bench clean

run: setup
	$(VENV)/bin/virtkit run

test: setup
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

lint: venv
	$(VENV)/bin/ruff check .

bench: setup
	@for b in bench/*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache .ruff_cache
