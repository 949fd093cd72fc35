# mocolab set-up and main jobs. `make demo` and `make test` each create .venv when it is missing.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch and torchvision pinned to the releases this project is tested with.
TORCH_PINS := torch==2.14.1 torchvision==0.29.1

# The demo: a short MoCo v2 pretraining of the CIFAR-10 recipe through notebooks/02_pretrain.ipynb,
# a few minutes on a laptop CPU. Offline, point it at an ImageFolder copy of CIFAR-10:
#   make demo DATASET=imagefolder DATA_ROOT=/path/to/cifar10
DATASET ?= cifar10
DATA_ROOT ?= data
DEMO_OUT ?= runs/demo
# More notebook parameters, e.g. DEMO_PARAMS="-p epochs 20"; the notebook's defaults are the short demo.
DEMO_PARAMS ?=

.PHONY: venv demo test test-fast test-compat lint format exercises gpu-check wheel clean

# Quiet pip, but every step says what it does and how long it took on a 2-core machine.
$(VENV)/.installed: pyproject.toml Makefile
	@test -x $(PY) || { echo "creating $(VENV) ..."; $(PYTHON) -m venv $(VENV); }
	@echo "installing $(TORCH_PINS) into $(VENV) (about 1 minute from a local cache, a few more when pip downloads several GB) ..."
	@$(PY) -m pip install --quiet $(TORCH_PINS)
	@echo "installing mocolab with its notebook, test and transfer dependencies (about 1-2 minutes) ..."
	@$(PY) -m pip install --quiet -e '.[notebooks,dev,transfer]'
	@touch $@
	@echo "$(VENV) is ready"

venv: $(VENV)/.installed

# runs/demo is also notebook 02's default output_dir and notebooks 03/04's default checkpoint. A run already
# there (from an earlier `make demo` or from 02 in JupyterLab) is moved aside, never deleted.
demo: venv
	@if [ -e $(DEMO_OUT) ]; then old=$(DEMO_OUT).$$(date +%Y%m%d-%H%M%S); mv $(DEMO_OUT) $$old; \
	    echo "the run that was in $(DEMO_OUT) is now in $$old"; fi
	@echo "running notebooks/02_pretrain.ipynb headless into $(DEMO_OUT)/; without a GPU, the cifar10_cpu recipe" \
	    "takes about 5 minutes on 2 cores. One line per epoch:"
	@$(PY) -m mocolab.ui.headless notebooks/02_pretrain.ipynb $(DEMO_OUT)/02_pretrain.ipynb --log $(DEMO_OUT)/log.txt \
	    -p dataset $(DATASET) -p data_root $(DATA_ROOT) -p output_dir $(DEMO_OUT) $(DEMO_PARAMS) \
	    --hint "DatasetError=No network, or CIFAR-10 already on disk? make demo DATASET=imagefolder DATA_ROOT=/path/to/cifar10 (a folder with train/ and test/)"
	@echo "metrics, curves and checkpoints: $(DEMO_OUT)/; next: open notebooks/03_evaluate.ipynb or 04_embeddings.ipynb"

# Real-data tests read CIFAR-10 as an ImageFolder from $$MOCOLAB_CIFAR10 (default ../shared/data/cifar10).
# TEST_WORKERS pytest-xdist processes share the cores (conftest.py gives each cores / workers threads); a module's
# tests stay in one process (--dist loadscope), so its module fixtures are built once. TEST_WORKERS=0: one process.
TEST_WORKERS ?= 2
XDIST := $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadscope)
test: venv
	$(PY) -m pytest $(XDIST) $(PYTEST_ARGS)

# The fast tier: every module's reference tests, no notebook, no multi-epoch or multi-process run (-m "not slow").
test-fast: venv
	$(PY) -m pytest -m "not slow" $(XDIST) $(PYTEST_ARGS)

# The compiled paths under another torch, on the CPU: by default the GPU machines' image (torch 2.11.0, torchvision
# 0.26.0), whose inductor differs from 2.14's (it could not compile the shuffle's x[randperm(N)], and its argmax
# picked the wrong crop attempt). Run it before a GPU lease, so the lease is not spent finding that; a second venv,
# about 3 GB and 1-2 minutes from a local cache, then about 4 minutes of tests and the CPU check on 2 cores.
#   make test-compat CHECK_ARGS="--data-root /path/to/cifar10"     offline: CIFAR-10 as an ImageFolder
COMPAT_PINS ?= torch==2.11.0 torchvision==0.26.0
COMPAT_VENV ?= .venv-compat
COMPAT_TESTS := tests/test_moco.py tests/test_compile_step.py tests/test_batched_augment.py
test-compat:
	@test -x $(COMPAT_VENV)/bin/python || $(PYTHON) -m venv $(COMPAT_VENV)
	@echo "installing $(COMPAT_PINS) and mocolab into $(COMPAT_VENV) ..."
	@$(COMPAT_VENV)/bin/python -m pip install --quiet $(COMPAT_PINS) -e '.[dev]'
	$(COMPAT_VENV)/bin/python -m pytest $(XDIST) $(PYTEST_ARGS) $(COMPAT_TESTS)
	$(COMPAT_VENV)/bin/python -m mocolab.check --cpu --out runs/compat_check $(CHECK_ARGS)

# ruff check (pyflakes and pycodestyle at 120 columns) and ruff format --check, configured in pyproject.toml;
# CI fails on either. `make format` rewrites the files as the check wants them.
LINTED := mocolab tests benchmarks
lint: venv
	$(PY) -m ruff check $(LINTED)
	$(PY) -m ruff format --check $(LINTED)

format: venv
	$(PY) -m ruff format $(LINTED)
	$(PY) -m ruff check --fix $(LINTED)

# The exercise notebook's two versions from notebooks/exercises/source.ipynb (solutions between BEGIN / END SOLUTION
# lines): exercises.ipynb for students (committed; a test checks it is this build) and solutions.ipynb (not committed).
exercises: venv
	$(PY) -m mocolab.ui.exercise_book notebooks/exercises/source.ipynb

# The machine check (python -m mocolab.check): does this GPU machine run every mocolab path, and how fast?
# Stages 1-4 in about 9 minutes on one H100/H200; the table is printed and written to runs/gpu_check/.
#   make gpu-check CHECK_ARGS="--data-root /path/to/cifar10"   offline: CIFAR-10 as an ImageFolder
#   make gpu-check CHECK_ARGS=--cpu                              tiny stages 1-3 on the CPU (what CI runs)
#   make gpu-check CHECK_ARGS="--full --symmetric"              also the 200-epoch demo
#   make gpu-check CHECK_ARGS="--full --compile graphs"         the 200-epoch demo's step as CUDA graphs
#   make gpu-check PY=python3                                    with an interpreter that has torch already
CHECK_ARGS ?=
gpu-check: $(if $(filter command line,$(origin PY)),,venv)
	@$(PY) -m mocolab.check $(CHECK_ARGS)

# A wheel of the package (dist/mocolab-*.whl): the notebooks' set-up cell installs it where there is no clone
# (upload it beside the notebook on Colab).
wheel: venv
	$(PY) -m pip wheel --quiet --no-deps --wheel-dir dist .
	@ls dist/mocolab-*.whl

clean:
	rm -rf $(VENV) $(COMPAT_VENV) *.egg-info .pytest_cache
