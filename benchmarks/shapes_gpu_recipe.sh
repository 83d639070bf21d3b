#!/usr/bin/env bash
# The shapes world on one GPU in under 10 minutes (run on an H200; an H100 is about as fast):
# the base model, then soft-token ablations for it, then a text-to-image accuracy table (no FID,
# no edits: those run on CPU with the chosen tokens, benchmarks/shapes_alignment.py).
#
#   OUT=runs/gpu-recipe bash benchmarks/shapes_gpu_recipe.sh
#
# Everything is written to $OUT as soon as it exists (the model first), so a run cut short still
# returns what it finished. Token runs get whatever time is left before $DEADLINE seconds.
# Knobs for a CPU dry run: SAMPLES, VAE_STEPS, DECODER_STEPS, MINUTES, TOKEN_DATA, EVAL_N, DEVICE.
set -u
START=$(date +%s)
OUT=${OUT:-runs/gpu-recipe}
RUNS=${RUNS:-runs/gpu}
DEVICE=${DEVICE:-cuda}
DEADLINE=${DEADLINE:-570}        # seconds after START by which everything must be in $OUT
MINUTES=${MINUTES:-5.5}          # denoiser step time
SAMPLES=${SAMPLES:-250000}       # rendered training images
VAE_STEPS=${VAE_STEPS:-2000}     # autoencoder steps (batch 64)
DECODER_STEPS=${DECODER_STEPS:-3000}
WORKERS=${WORKERS:-14}           # render processes
EVAL_N=${EVAL_N:-300}
PY=${PY:-python3}
mkdir -p "$OUT" "$RUNS"
export PYTHONUNBUFFERED=1
left() { echo $(( DEADLINE - ($(date +%s) - START) )); }

# token training data (CPU) while the model trains
$PY -m data_prep.shapes make --out "$RUNS/tokdata" --n "${TOKEN_DATA:-4000}" --seed 7 --split train > "$RUNS/tokdata.log" 2>&1 &
$PY -m softrepa.shapes_model build --out "$RUNS/model" --work "$RUNS/model.build" --device "$DEVICE" \
  --workers "$WORKERS" --train-samples "$SAMPLES" --vae-steps "$VAE_STEPS" --vae-batch 64 \
  --decoder-steps "$DECODER_STEPS" --batch 256 --lr 1e-3 --warmup 200 --ema-decay 0.999 \
  --steps 1000000 --minutes "$MINUTES" --checkpoint-every 1000000 --threads 2 > "$RUNS/build.log" 2>&1
echo "build: exit $? at $(( $(date +%s) - START )) s: $(grep -o '"steps": [0-9]*' "$RUNS/model/build_report.json" 2>/dev/null | head -1)"
wait
[ -f "$RUNS/model/build_report.json" ] || { tail -c 3000 "$RUNS/build.log"; exit 1; }
# ship the model back before anything else can fail (the tokenizers are the shipped ones)
tar -C "$RUNS" --exclude=tokenizer --exclude=tokenizer_2 -cf - model | split -b 15m - "$OUT/model.tar.part-"

# soft tokens: name, then the trainer's loss/optimiser flags (m 4, L 3 throughout)
declare -A TOKENS=(
  [lr1e-2]="--lr 1e-2 --tau 0.07 --scale 4 --batch-size 8"
  [lr3e-3]="--lr 3e-3 --tau 0.07 --scale 4 --batch-size 8"
  [b16]="--lr 1e-2 --tau 0.07 --scale 4 --batch-size 16"
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
  --exclude=model --exclude=model.build --exclude=tokdata .
ls -la "$OUT"; echo "done at $(( $(date +%s) - START )) s"
