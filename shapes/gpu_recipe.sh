#!/usr/bin/env bash
# The shipped shapes-world model on one GPU (an H200; an H100 is about as fast), in stages:
#   base      - VAE, then the denoiser from scratch: 5.5 min of batch-256 steps (~8 min in all)
#   continue  - the denoiser continued at batch 1024 with a cosine learning-rate decay (1.4 min):
#               a tiny model is launch-bound on a GPU, so 4x the batch costs ~1.3x the step time
#   tokens    - soft-token ablations for whatever time is left, then a text-to-image accuracy
#               table (no FID, no edits: those run on CPU, benchmarks/shapes_alignment.py)
#
#   OUT=runs/gpu-recipe STAGES="base continue tokens" bash shapes/gpu_recipe.sh
#
# The shipped model ran "base tokens" in one 10-minute device call and "continue" in a second
# (with the first call's model in $RUNS/model). Everything is written to $OUT as soon as it
# exists (each model first), so a run cut short still returns what it finished. Token runs get
# the time left before $DEADLINE seconds.
# Knobs for a CPU dry run: SAMPLES, VAE_STEPS, DECODER_STEPS, MINUTES, CONTINUE_MINUTES,
# CONTINUE_SAMPLES, TOKEN_DATA, EVAL_N, DEVICE.
set -u
START=$(date +%s)
OUT=${OUT:-runs/gpu-recipe}
RUNS=${RUNS:-runs/gpu}
DEVICE=${DEVICE:-cuda}
DEADLINE=${DEADLINE:-570}        # seconds after START by which everything must be in $OUT
STAGES=${STAGES:-base continue tokens}
MINUTES=${MINUTES:-5.5}          # denoiser step time, base stage
CONTINUE_MINUTES=${CONTINUE_MINUTES:-1.4}
CONTINUE_SAMPLES=${CONTINUE_SAMPLES:-200000}
SAMPLES=${SAMPLES:-250000}       # rendered training images
VAE_STEPS=${VAE_STEPS:-2000}     # autoencoder steps (batch 64)
DECODER_STEPS=${DECODER_STEPS:-3000}
WORKERS=${WORKERS:-14}           # render processes
EVAL_N=${EVAL_N:-300}
PY=${PY:-python3}
mkdir -p "$OUT" "$RUNS"
export PYTHONUNBUFFERED=1
left() { echo $(( DEADLINE - ($(date +%s) - START) )); }

has() { [[ " $STAGES " == *" $1 "* ]]; }
ship() {  # the model back to $OUT before anything else can fail (the tokenizers are the shipped ones)
  # $1: stage, $2: its build's exit status (a failed stage must not ship the previous stage's model)
  [ "$2" -eq 0 ] && [ -f "$RUNS/model/build_report.json" ] || { tail -c 3000 "$RUNS/$1.log"; exit 1; }
  echo "$1: at $(( $(date +%s) - START )) s: $(grep -o '"steps": [0-9]*' "$RUNS/model/build_report.json" | head -1)"
  tar -C "$RUNS" --exclude=tokenizer --exclude=tokenizer_2 -cf - model | split -b 15m - "$OUT/model-$1.tar.part-"
}

# token training data (CPU) while the model trains
# (edit pairs: each caption with a one-attribute-changed hard negative, for --hard-negatives)
has tokens && $PY -m shapes.world edits --out "$RUNS/tokdata/metadata.jsonl" --n "${TOKEN_DATA:-4000}" --seed 7 \
  --split train > "$RUNS/tokdata.log" 2>&1 &
if has base; then
  $PY -m shapes.model build --out "$RUNS/model" --work "$RUNS/model.build" --device "$DEVICE" \
    --workers "$WORKERS" --train-samples "$SAMPLES" --vae-steps "$VAE_STEPS" --vae-batch 64 \
    --decoder-steps "$DECODER_STEPS" --batch 256 --lr 1e-3 --warmup 200 --ema-decay 0.999 \
    --steps 1000000 --minutes "$MINUTES" --checkpoint-every 1000000 --threads 2 > "$RUNS/base.log" 2>&1
  ship base $?
fi
if has continue; then  # fresh renders (seed 1), the VAE and its latent scaling kept
  $PY -m shapes.model build --init-from "$RUNS/model" --out "$RUNS/model" --work "$RUNS/model.continue" \
    --device "$DEVICE" --workers "$WORKERS" --train-samples "$CONTINUE_SAMPLES" --seed 1 --batch 1024 --lr 1e-3 --warmup 50 \
    --lr-schedule cosine --ema-decay 0.998 --steps 1000000 --minutes "$CONTINUE_MINUTES" --checkpoint-every 1000000 \
    --threads 2 > "$RUNS/continue.log" 2>&1
  ship continue $?
fi
wait
has tokens || { ls -la "$OUT"; exit 0; }

# soft tokens: name, then the trainer's loss/optimiser flags: the second-round ablation of docs/shapes_results.md
# (run there on CPU, 30 min each; C ships), here with the time a GPU call has left
TAU_T="--hard-negatives --per-sample-t --tau 0.05 --tau-schedule linear --tau-end 1.0 --lr 3e-3 --batch-size 4"
declare -A TOKENS=(
  [A-dweight0]="$TAU_T --dweight 0"
  [B-dweight1]="$TAU_T --dweight 1"
  [C-dweight10]="$TAU_T --dweight 10"
  [D-m16-L6]="$TAU_T --dweight 1 --num-tokens 16 --num-layers 6"
)
# the time left, less about 70 s for loading, caching and the evaluation
TOKEN_MINUTES=$(python3 -c "print(max(0.2, ($(left) - 70) / 60))")
echo "tokens: $TOKEN_MINUTES min each"
for name in "${!TOKENS[@]}"; do
  $PY -m softrepa.train --model "$RUNS/model" --kind shapes-sd3 --data "$RUNS/tokdata" --output "$RUNS/tok-$name" \
    --cache-dir "$RUNS/cache-$name" --max-steps 100000 --max-minutes "$TOKEN_MINUTES" --checkpoint-every 100000 \
    --validate-every 100000 --resolution 64 --mixed-precision no --no-progress ${TOKENS[$name]} \
    > "$RUNS/tokens-$name.log" 2>&1 &
done
wait
evaluate() {  # base and tokens, the same captions and seeds
  [ -f "$RUNS/tok-$1/tokens-final.safetensors" ] || return
  $PY benchmarks/shapes_alignment.py --model "$RUNS/model" --tokens "$RUNS/tok-$1/tokens-final.safetensors" \
    --n "$EVAL_N" --no-fid --no-edit --device "$DEVICE" --threads 2 --out "$RUNS/eval-$1" > "$RUNS/eval-$1.log" 2>&1
}
for name in "${!TOKENS[@]}"; do evaluate "$name" & done
wait
for name in "${!TOKENS[@]}"; do
  echo "== $name: $(grep -o 'done at step [0-9]*' "$RUNS/tokens-$name.log")"
  sed -n '/| method | attribute/,/^$/p;/full-prompt acc by grammar/,/^$/p' "$RUNS/eval-$name.log" 2>/dev/null
done
tar -C "$RUNS" -czf "$OUT/results.tgz" --exclude='cache-*' --exclude='checkpoints' --exclude=samples \
  --exclude=model --exclude=model.build --exclude=model.continue --exclude=tokdata .
ls -la "$OUT"; echo "done at $(( $(date +%s) - START )) s"
