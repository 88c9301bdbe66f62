# Two commands on a fresh machine (Python 3.11):  make demo  ·  make test
# Use your own environment instead:  make test VENV=/path/to/env  (or pip install -r
# requirements.txt and run the commands below with your python).
VENV ?= .venv
PY := $(VENV)/bin/python
DEMO_SAVE ?= snapshots/demo

.PHONY: demo test bench

$(VENV)/.installed: requirements.txt
	test -x $(PY) || python3.11 -m venv $(VENV)
	$(PY) -m pip install -q -r requirements.txt
	touch $@

# FSDP (CS 10% + GM 40%) on the bundled Fashion-MNIST demo: a few minutes on 2 CPU cores
demo: $(VENV)/.installed
	$(PY) notebook_cifar.py --dataset fashion_demo --data_path datasets/fashion_demo \
	    --arch resnet20 --prune_rate_cs 0.1 --prune_rate_gm 0.4 --epochs 12 \
	    --schedule 1 6 9 --gammas 10 0.2 0.2 --manualSeed 1 --overwrite --save_path $(DEMO_SAVE)

test: $(VENV)/.installed
	$(PY) -m pytest -q

bench: $(VENV)/.installed
	$(PY) -m bench.cs_pass
	$(PY) -m bench.train_step
	$(PY) -m bench.compact_latency
	$(PY) -m bench.gsc_pipeline
