# Two commands on a fresh machine (Python 3.11):  make demo  ·  make test
# Use your own environment instead:  make test VENV=/path/to/env  (or pip install -r
# requirements.txt and run the commands below with your python).
VENV ?= .venv
PY := $(VENV)/bin/python
DEMO_SAVE ?= snapshots/demo

.PHONY: demo test bench gpu-check

# the checkout itself too, in development mode: the package fsdp_pruning (utils/ under its
# installed name), as the examples and a user's code import it
$(VENV)/.installed: requirements.txt pyproject.toml
	test -x $(PY) || python3.11 -m venv $(VENV)
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	touch $@

DEMO = notebook_cifar.py --dataset fashion_demo --data_path datasets/fashion_demo --arch resnet20 \
	--epochs 8 --schedule 1 4 6 --gammas 10 0.2 0.2 --manualSeed 1 --overwrite

# FSDP (CS 10% + GM 40%) as the paper has it, FSDP with the BN variant
# (docs/soft-pruning-and-batchnorm.md; its stored-BN test curve needs no refresh) and the dense
# run of the same recipe on the bundled Fashion-MNIST demo, then their comparison report: about
# 7 minutes on 2 CPU cores (6 min 53 s, 2026-12-06)
demo: $(VENV)/.installed
	$(PY) $(DEMO) --eval_bn_refresh 5 --prune_rate_cs 0.1 --prune_rate_gm 0.4 --save_path $(DEMO_SAVE)/fsdp
	$(PY) $(DEMO) --prune_rate_cs 0.1 --prune_rate_gm 0.4 --attenuate bn --save_path $(DEMO_SAVE)/fsdp-bn
	$(PY) $(DEMO) --prune_rate_cs 0 --prune_rate_gm 0 --save_path $(DEMO_SAVE)/dense
	$(PY) compare.py $(DEMO_SAVE)/fsdp $(DEMO_SAVE)/fsdp-bn $(DEMO_SAVE)/dense --out $(DEMO_SAVE)

# one worker process per core, each with one intra-op thread (tests/conftest.py); a test file's
# tests stay in one worker, so its module fixtures (a trained run shared by its tests) run once
test: $(VENV)/.installed
	$(PY) -m pytest -q -n auto --dist loadfile

bench: $(VENV)/.installed
	$(PY) -m bench.cs_pass
	$(PY) -m bench.gm_scores
	$(PY) -m bench.train_step
	$(PY) -m bench.epoch_cost
	$(PY) -m bench.compact_latency
	$(PY) -m bench.compact_zoo
	$(PY) -m bench.gsc_pipeline
	$(PY) -m bench.imagenet_loader

# on a machine with one GPU (under 10 minutes): AMP against fp32, exact resume with and without
# --deterministic, the compact network on the GPU, throughput; one line per check
# (docs/benchmarks.md)
gpu-check: $(VENV)/.installed
	$(PY) -m bench.gpu_check
