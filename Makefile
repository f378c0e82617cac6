# Quick start:  make test   |   make demo   (make test-fast: the edit-test loop, under a minute)
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
# torch build: empty uses the configured package sources (here: the local CPU wheel of torch==2.13.0).
# Elsewhere pick the build with one variable, e.g.
#   make test TORCH_INDEX=https://download.pytorch.org/whl/cpu      (CPU-only)
#   make test TORCH_INDEX=https://download.pytorch.org/whl/cu128    (CUDA 12.8)
TORCH_INDEX ?=
TORCH_SPEC ?= torch==2.13.0
DEMO_ARGS ?=

.PHONY: test test-fast demo lint clean

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q "$(TORCH_SPEC)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

# The test executable (not `python -m pytest`) keeps the repository root off the front of sys.path,
# where profile.py would shadow the standard library's profile module.
test: $(VENV)/.installed
	$(VENV)/bin/pytest -q

# Everything but simulator rollouts, DDP, training to a loss and subprocess CLI runs (tests/conftest.py)
test-fast: $(VENV)/.installed
	$(VENV)/bin/pytest -q -m "not slow"

demo: $(VENV)/.installed
	$(PY) -m planners.demo $(DEMO_ARGS)

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check trajectory planners experiments tests benchmarks train.py train_critic.py eval.py profile.py

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .ruff_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
