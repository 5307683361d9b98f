# The README's two commands live here: `make demo` and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
RUN_DIR ?= runs/demo

.PHONY: demo test install clean-demo

# Create the virtualenv and install the package with its test extras (idempotent).
$(VENV)/.installed: setup.py Makefile
	@test -n "$(PYTHON)" || { echo "error: no python3.11 found; run with PYTHON=/path/to/python3.11"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev,tfds,tune,explain,jax,ann]"
	touch $@

install: $(VENV)/.installed

# Train, evaluate, export and explain on the embedded synthetic data; prints metrics and outputs.
demo: install
	rm -rf $(RUN_DIR)
	$(PY) -m trainer.task train --config configs/demo.yaml --model_dir $(RUN_DIR)
	$(PY) -m trainer.task explain --model_dir $(RUN_DIR) --num_examples 50

# Everything under TensorFlow, then the model tests and a short training run under JAX
# (the same models on the second engine; trainer/backend.py). TEST_WORKERS pytest-xdist
# processes share the tests a file at a time (a file's module fixtures are built once),
# the longest files first (tests/conftest.py);
# much of a tiny model's time is single-threaded Python and graph tracing, so two
# workers keep two cores busy. Each worker holds its own TensorFlow (about 2 GiB).
test: install
	$(PY) -m pytest tests -q $(XDIST) --durations=25
	KERAS_BACKEND=jax $(PY) -m pytest $(JAX_TESTS) -q $(XDIST)

TEST_WORKERS ?= 2
XDIST = $(if $(filter-out 0 1,$(TEST_WORKERS)),-n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder,)
JAX_TESTS ?= tests/models tests/trainer/test_backends.py

clean-demo:
	rm -rf $(RUN_DIR)
