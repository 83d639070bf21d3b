#!/usr/bin/env bash
# The shapes world on one GPU, in about 9 minutes (run on an H100): two base-model
# architectures trained side by side, soft tokens for each with a tau / scale ablation, and a
# text-to-image accuracy table (no FID, no edits: those run on CPU with the chosen model).
#
#   OUT=runs/gpu-recipe bash benchmarks/shapes_gpu_recipe.sh
#
# The VAE stages are deterministic and cheap; put their checkpoints (vae.pt, decoder.pt from a
# previous build's work folder) in $VAE_DIR to reuse them, so every model shares the shipped
# VAE's latent space. Knobs for a CPU dry run: MINUTES, SAMPLES, TOKEN_DATA, TOKEN_MINUTES, EVAL_N, DEVICE.
set -u
OUT=${OUT:-runs/gpu-recipe}
RUNS=${RUNS:-runs/gpu}
VAE_DIR=${VAE_DIR:-}
DEVICE=${DEVICE:-cuda}
MINUTES=${MINUTES:-5.0}          # denoiser step time per model
SAMPLES=${SAMPLES:-150000}       # rendered training images
BATCH=${BATCH:-256}
WORKERS=${WORKERS:-7}            # render processes per build (two builds run at once)
TOKEN_MINUTES=${TOKEN_MINUTES:-1.5}
EVAL_N=${EVAL_N:-300}
PY=${PY:-python3}
mkdir -p "$OUT" "$RUNS"
export PYTHONUNBUFFERED=1

# name, then the architecture flags of each base model
declare -A ARCH=(
  [A]="--num-layers 6 --heads 4 --head-dim 32"   # the shipped size (CPU edit < 1 s)
  [B]="--num-layers 8 --heads 5 --head-dim 32"   # wider and deeper, still < 40 MB in fp16
)

build() {
  local name=$1
  mkdir -p "$RUNS/$name.build"
  [ -n "$VAE_DIR" ] && cp "$VAE_DIR/vae.pt" "$VAE_DIR/decoder.pt" "$RUNS/$name.build/"
  $PY -m softrepa.shapes_model build --out "$RUNS/$name" --work "$RUNS/$name.build" --device "$DEVICE" \
    --workers "$WORKERS" --train-samples "$SAMPLES" --batch "$BATCH" --lr 1e-3 --warmup 200 --ema-decay 0.999 \
    --steps 1000000 --minutes "$MINUTES" --checkpoint-every 1000000 --threads 2 ${ARCH[$name]} \
    > "$OUT/build-$name.log" 2>&1
  echo "build $name: exit $? $(grep -o '"steps": [0-9]*' "$RUNS/$name/build_report.json" 2>/dev/null | head -1)"
}

# token training data (CPU) while the models train
$PY -m data_prep.shapes make --out "$RUNS/tokdata" --n "${TOKEN_DATA:-4000}" --seed 7 --split train > "$OUT/tokdata.log" 2>&1 &
for name in "${!ARCH[@]}"; do build "$name" & done
wait

# ship the models back before anything else can fail (tokenizers are the shipped ones)
for name in "${!ARCH[@]}"; do
  [ -f "$RUNS/$name/build_report.json" ] || continue
  tar -C "$RUNS" --exclude=tokenizer --exclude=tokenizer_2 -cf - "$name" | split -b 15m - "$OUT/model-$name.tar.part-"
done

# soft tokens: name, model, loss settings
declare -A TOKENS=(
  [A-t07]="A --tau 0.07 --scale 4"
  [A-t30]="A --tau 0.3 --scale 4"
  [A-t30s16]="A --tau 0.3 --scale 16"
  [B-t30]="B --tau 0.3 --scale 4"
)
train_tokens() {
  local name=$1; set -- ${TOKENS[$name]}
  local model=$1; shift
  [ -f "$RUNS/$model/build_report.json" ] || return
  $PY -m softrepa.train --model "$RUNS/$model" --kind shapes-sd3 --data "$RUNS/tokdata" --output "$RUNS/tok-$name" \
    --cache-dir "$RUNS/cache-$name" --batch-size 8 --max-steps 100000 --max-minutes "$TOKEN_MINUTES" --lr 3e-3 \
    --checkpoint-every 100000 --validate-every 100000 --resolution 64 --mixed-precision no --no-progress "$@" \
    > "$OUT/tokens-$name.log" 2>&1
  echo "tokens $name: exit $? $(tail -1 "$OUT/tokens-$name.log")"
}
for name in "${!TOKENS[@]}"; do train_tokens "$name" & done
wait

evaluate() {
  local name=$1; set -- ${TOKENS[$name]}
  [ -f "$RUNS/tok-$name/tokens-final.safetensors" ] || return
  $PY benchmarks/shapes_alignment.py --model "$RUNS/$1" --tokens "$RUNS/tok-$name/tokens-final.safetensors" \
    --n "$EVAL_N" --no-fid --no-edit --device "$DEVICE" --threads 2 --out "$RUNS/eval-$name" > "$OUT/eval-$name.log" 2>&1
  echo "eval $name: $(grep RESULT "$OUT/eval-$name.log")"
}
for name in "${!TOKENS[@]}"; do evaluate "$name" & done
wait

for name in "${!TOKENS[@]}"; do
  echo "== $name"; sed -n '/| method | attribute/,/^$/p' "$OUT/eval-$name.log" 2>/dev/null
done
tar -C "$RUNS" -czf "$OUT/results.tgz" --exclude='cache-*' --exclude='checkpoints' --exclude=samples \
  $(cd "$RUNS" && ls -d tok-* eval-* */build_report.json 2>/dev/null)
cp "$OUT"/*.log "$RUNS"/ 2>/dev/null
tar -C "$OUT" -czf "$OUT/logs.tgz" $(cd "$OUT" && ls *.log) && rm -f "$OUT"/*.log
ls -la "$OUT"
