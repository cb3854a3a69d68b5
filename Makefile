# Two commands do all set-up on a fresh Debian 12 machine (as root):
#   make demo   - the main job end to end on the built-in local lab
#   make test   - every check and the whole test suite (unit and lab)
PYTHON := .venv/bin/python

.PHONY: deps demo test lint unit bench lab-up lab-down clean

deps:
	bash scripts/install-deps.sh

demo: deps
	$(PYTHON) scripts/demo.py $(if $(KEEP),--keep)

lint: deps
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	.venv/bin/mypy

test: lint
	$(PYTHON) -m pytest

unit: deps
	$(PYTHON) -m pytest -m "not lab"

# trust-clients on 50 lab hosts beside plain ssh and Ansible (about 10 minutes).
bench: deps
	$(PYTHON) -m pip install --quiet --disable-pip-version-check -r requirements-bench.txt
	$(PYTHON) scripts/benchmark.py $(BENCH_ARGS)

lab-up: deps
	$(PYTHON) -m tests.lab up

lab-down:
	$(PYTHON) -m tests.lab down

clean: lab-down
	rm -rf .lab .venv
