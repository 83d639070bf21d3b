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
# torch would pull a multi-GB CUDA build. Then the project itself, editable, with the metric that
# shares the core environment (FID) and the test tools (pyproject.toml).
install: $(BIN)/python
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e ".[eval,test]"

# the app on the bundled shapes model and its tokens (no download); opens http://127.0.0.1:7860
demo: install
	$(BIN)/python app.py

# The browser test needs Debian's Chromium; when it cannot be installed the suite still runs and
# says loudly, at the end, that the browser test was skipped (and fails under CI).
test: install
	bash .ci/install-browser.sh || echo "WARNING: Chromium could not be installed: the browser test will be SKIPPED" >&2
	$(BIN)/python -m pytest -q -x tests

# Rebuild the bundled shapes world (seeded): base model (from scratch, then continued at a larger
# batch with a cosine decay), token training data (edit pairs: each caption with a one-attribute-
# changed hard negative), soft tokens (tau(t) linear 0.05 -> 1.0, denoising weight 10). The base
# model's defaults are the shipped recipe on one GPU (about 10 min on an H200;
# shapes/gpu_recipe.sh ran it time-boxed, these step counts are what it reached); the
# shipped tokens' 3220 steps are what 30 min on one CPU thread reached. Then run benchmarks/shapes_alignment.py. On a CPU,
#   make shapes SHAPES_DEVICE=cpu SHAPES_BUILD= SHAPES_CONTINUE=
# runs the CPU defaults of `python -m shapes.model build` (about 90 min on 2 cores) and
# skips the continuation (an empty SHAPES_CONTINUE ships the base model as it is).
SHAPES_DEVICE ?= cuda
SHAPES_BUILD ?= --workers 14 --train-samples 250000 --vae-steps 2000 --vae-batch 64 --decoder-steps 3000 \
	--batch 256 --lr 1e-3 --warmup 200 --ema-decay 0.999 --steps 5232
SHAPES_CONTINUE ?= --workers 14 --train-samples 200000 --seed 1 --batch 1024 --lr 1e-3 --warmup 50 \
	--lr-schedule cosine --ema-decay 0.998 --steps 1011
SHAPES_TOKENS ?= --max-steps 3220 --lr 3e-3
shapes: install
	$(BIN)/python -m shapes.model build --out runs/shapes-sd3-base --work runs/shapes-sd3-base.build \
		--device $(SHAPES_DEVICE) $(SHAPES_BUILD)
	if [ -n "$(strip $(SHAPES_CONTINUE))" ]; then \
		$(BIN)/python -m shapes.model build --init-from runs/shapes-sd3-base --out assets/shapes-sd3 \
			--work runs/shapes-sd3.continue --device $(SHAPES_DEVICE) $(SHAPES_CONTINUE); \
	else rm -rf assets/shapes-sd3 && cp -r runs/shapes-sd3-base assets/shapes-sd3; fi
	$(BIN)/python -m shapes.world edits --out runs/shapes-train/metadata.jsonl --n 4000 --seed 7 --split train
	$(BIN)/python -m softrepa.train --model assets/shapes-sd3 --kind shapes-sd3 --data runs/shapes-train \
		--output runs/shapes-tokens --batch-size 4 --hard-negatives --per-sample-t --tau 0.05 \
		--tau-schedule linear --tau-end 1.0 --dweight 10 --checkpoint-every 200 --validate-every 100000 \
		--resolution 64 --mixed-precision no $(SHAPES_TOKENS)
	cp runs/shapes-tokens/tokens-final.safetensors assets/shapes-sd3-softrepa.safetensors
