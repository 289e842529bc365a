#!/usr/bin/env bash
# Train the embedded tiny IM-Animation model on the puppet world, on a 2-core CPU, and install it into
# imanim_core/weights/ (fp16). Seeded and resumable: re-running continues each stage from its last checkpoint.
#
#   scripts/train_tiny_default.sh [RUN_DIR]        (default RUN_DIR: runs/tiny)
#
# Schedule (two single-thread processes side by side; on 2 cores that beats one 2-thread process):
#   phase A:  train vae (the TAEHV-layout tiny VAE from its colour-path init: 9-frame clips, 64-px crops, bf16, MSE)
#             ||  train stage1 -> train stage1 --decoder-only (tokenizer frozen: the decoder and joint head go on
#                 learning after the codes have settled)
#   phase B:  train stage2 (driver-pose path) -> stage3 (batch 8, retargeter frozen)
#             ||  skeleton baseline (the explicit control of `eval`, same stage-3 recipe and steps as stage 3)
#                 -> train vae --decoder-only --latent-noise (the encoder, so the latent space stages 2-3 train on,
#                 stays fixed; the decoder learns to tolerate the DiT's small latent errors)
#   then:     install (fp16; the VAE keeps decoder.1.weight fp32) and `eval --stages` (DIR/eval/gates.md)
# Step counts are set by the variables below (the defaults are what the shipped model used; see
# imanim_core/weights/TRAINING.md for its losses and times). STEPS_SCALE=0.01 gives a quick smoke run.
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=${1:-runs/tiny}
SCALE=${STEPS_SCALE:-1}
steps() { python3 -c "import sys; print(max(2, int(round($1 * $SCALE))))"; }
VAE_STEPS=$(steps ${VAE_STEPS:-2000})
S1_STEPS=$(steps ${S1_STEPS:-1200})
S1B_STEPS=$(steps ${S1B_STEPS:-600})
S2_STEPS=$(steps ${S2_STEPS:-500})
S3_STEPS=$(steps ${S3_STEPS:-4000})
VAEDEC_STEPS=$(steps ${VAEDEC_STEPS:-800})
SEED=${SEED:-0}
PY=${PY:-.venv/bin/python}
COMMON=(--preset tiny-puppet --seed "$SEED" --threads 1 --log-every 25)
mkdir -p "$RUN"
resume() { [ -d "$1/checkpoints" ] && echo --resume || true; }
t0=$(date +%s)
echo "== phase A: vae ($VAE_STEPS steps) || stage1 ($S1_STEPS steps) -> stage1 --decoder-only ($S1B_STEPS steps)"
$PY -m imanim_core train vae "${COMMON[@]}" --max-steps "$VAE_STEPS" --out "$RUN/vae" $(resume "$RUN/vae") > "$RUN/vae.out" 2>&1 &
pa=$!
( $PY -m imanim_core train stage1 "${COMMON[@]}" --max-steps "$S1_STEPS" --out "$RUN/s1" $(resume "$RUN/s1") \
      > "$RUN/s1.out" 2>&1 &&
  $PY -m imanim_core train stage1 "${COMMON[@]}" --init "$RUN/s1" --decoder-only --lr 1e-3 --batch-size 32 \
      --warmup-steps 50 --max-steps "$S1B_STEPS" --out "$RUN/s1b" $(resume "$RUN/s1b") > "$RUN/s1b.out" 2>&1 ) &
pb=$!
wait $pa; wait $pb
tail -n 3 "$RUN/vae.out" "$RUN/s1.out" "$RUN/s1b.out"
echo "== phase B: stage2 ($S2_STEPS) -> stage3 ($S3_STEPS) || skeleton baseline ($S3_STEPS) -> vae decoder ($VAEDEC_STEPS)"
( $PY -m imanim_core baseline train "${COMMON[@]}" --vae "$RUN/vae" --max-steps "$S3_STEPS" --out "$RUN/skeleton" \
      $(resume "$RUN/skeleton") > "$RUN/skeleton.out" 2>&1 &&
  $PY -m imanim_core train vae "${COMMON[@]}" --init "$RUN/vae" --decoder-only --latent-noise 0.1 --lr 3e-4 \
      --max-steps "$VAEDEC_STEPS" --out "$RUN/vaedec" $(resume "$RUN/vaedec") > "$RUN/vaedec.out" 2>&1 ) &
pc=$!
$PY -m imanim_core train stage2 "${COMMON[@]}" --init "$RUN/s1b" --vae "$RUN/vae" --max-steps "$S2_STEPS" \
    --out "$RUN/s2" $(resume "$RUN/s2") > "$RUN/s2.out" 2>&1
tail -n 3 "$RUN/s2.out"
$PY -m imanim_core train stage3 "${COMMON[@]}" --init "$RUN/s2" --max-steps "$S3_STEPS" --out "$RUN/s3" \
    $(resume "$RUN/s3") > "$RUN/s3.out" 2>&1
tail -n 3 "$RUN/s3.out"
wait $pc
tail -n 3 "$RUN/skeleton.out"
echo "== install (fp16)"
$PY -c "import torch; from imanim_core.weights import install_from_export as i; print(i('$RUN/s3/export', dtype=torch.float16, vae='$RUN/vaedec'))"
$PY -m imanim_core baseline install "$RUN/skeleton/export"
echo "== per-stage gates and the benchmark (the installed model)"
$PY -m imanim_core eval --stages --out "$RUN/eval" --no-progress > "$RUN/eval.out" 2>&1 || true
cat "$RUN/eval/gates.md" 2>/dev/null || tail -n 20 "$RUN/eval.out"
echo "== done in $(( $(date +%s) - t0 )) s"
