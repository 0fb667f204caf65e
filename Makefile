# Two entry points: `make demo` (set up, then the main job) and `make test` (set up, then the suite).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# CPU machines: the torch build pip finds locally. GPU users: install their CUDA torch into
# $(VENV) first (any version the project's range admits); this step then installs nothing.
TORCH_SPEC ?= torch==2.13.0

.PHONY: setup demo test test-all lint bench reproduce reproduce-quick clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[dev,reference]"
	$(PY) -m pip install -q --no-deps "ai2-olmo==0.6.0"
	touch $@

setup: $(VENV)/.installed

# The main job: the bundled quick grid (OLMo 2 recipe vs single interventions, 2 seeds, CPU),
# then its report and spike dashboard. Rerunning skips what is done (the grid is resumable).
demo: setup
	$(VENV)/bin/stability grid run quick
	$(VENV)/bin/stability report quick
	$(VENV)/bin/stability dashboard quick
	@echo "the stability command is in $(VENV)/bin: run 'source $(VENV)/bin/activate' to put it on your PATH (or call $(VENV)/bin/stability)"

# The OLMo 2 stability section, finding by finding (docs/reproduce.md): ~45 min on 2 cores;
# the quick subset ~15 min. Both resumable: rerun to continue.
reproduce: setup
	$(VENV)/bin/stability reproduce

reproduce-quick: setup
	$(VENV)/bin/stability reproduce --quick

test: setup
	$(PY) -m pytest

test-all: setup
	$(PY) -m pytest -m "slow or not slow"

lint: setup
	$(VENV)/bin/ruff check .

bench: setup
	$(PY) benchmarks/bench_throughput.py

clean:
	rm -rf $(VENV) runs mlflow.db mlartifacts .pytest_cache results
