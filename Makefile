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
# More papermill options, e.g. DEMO_PARAMS="-p epochs 20"; the notebook's defaults are the short demo.
DEMO_PARAMS ?=

.PHONY: venv demo test clean

$(VENV)/.installed: pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet $(TORCH_PINS)
	$(PY) -m pip install --quiet -e '.[notebooks,dev,transfer]'
	touch $@

venv: $(VENV)/.installed

# The demo's output folder is scratch: it is cleared so that `make demo` can be run again.
demo: venv
	rm -rf $(DEMO_OUT)
	mkdir -p $(DEMO_OUT)
	$(VENV)/bin/papermill notebooks/02_pretrain.ipynb $(DEMO_OUT)/02_pretrain.ipynb \
	    -p dataset $(DATASET) -p data_root $(DATA_ROOT) -p output_dir $(DEMO_OUT) $(DEMO_PARAMS)
	@echo "Executed notebook, metrics, curves and checkpoints: $(DEMO_OUT)/"

# Real-data tests read CIFAR-10 as an ImageFolder from $$MOCOLAB_CIFAR10 (default ../shared/data/cifar10).
test: venv
	$(PY) -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
