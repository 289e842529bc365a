#!/usr/bin/env bash
# Train the embedded tiny IM-Animation model on the puppet world, on a 2-core CPU, and install it into
# imanim_core/weights/ (fp16). Seeded and resumable: re-running continues each stage from its last checkpoint.
#
#   scripts/train_tiny_default.sh [RUN_DIR]        (default RUN_DIR: runs/tiny)
#
# Schedule (two single-thread processes side by side; on 2 cores that beats one 2-thread process):
#   phase A:  train vae (5-frame clips)  ||  train stage1
#   phase A2: train vae --init (9-frame clips, 2 threads): with 5-frame clips the causal VAE only ever sees
#             latent frames 0-1, and frames after the 5th decoded to noise (12.6 dB); 9 frames reach the steady
#             state of its causal caches
#   phase B:  train stage2 -> stage3  ||  skeleton baseline (the explicit control of `eval`, same stage-3 recipe
#                                         and the same number of steps as stage 3)
# Step counts are set by the variables below (the defaults are what the shipped model used; see
# imanim_core/weights/TRAINING.md for its losses and times). STEPS_SCALE=0.01 gives a quick smoke run.
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=${1:-runs/tiny}
SCALE=${STEPS_SCALE:-1}
steps() { python3 -c "import sys; print(max(2, int(round($1 * $SCALE))))"; }
VAE_STEPS=$(steps ${VAE_STEPS:-700})
VAE9_STEPS=$(steps ${VAE9_STEPS:-200})
S1_STEPS=$(steps ${S1_STEPS:-2400})
S2_STEPS=$(steps ${S2_STEPS:-1000})
S3_STEPS=$(steps ${S3_STEPS:-2000})
SEED=${SEED:-0}
PY=${PY:-.venv/bin/python}
COMMON=(--preset tiny-puppet --seed "$SEED" --threads 1 --log-every 25)
mkdir -p "$RUN"
resume() { [ -d "$1/checkpoints" ] && echo --resume || true; }
t0=$(date +%s)
echo "== phase A: vae ($VAE_STEPS steps) || stage1 ($S1_STEPS steps)"
$PY -m imanim_core train vae "${COMMON[@]}" --max-steps "$VAE_STEPS" --out "$RUN/vae" $(resume "$RUN/vae") > "$RUN/vae.out" 2>&1 &
pa=$!
$PY -m imanim_core train stage1 "${COMMON[@]}" --max-steps "$S1_STEPS" --out "$RUN/s1" $(resume "$RUN/s1") > "$RUN/s1.out" 2>&1 &
pb=$!
wait $pa; wait $pb
tail -n 3 "$RUN/vae.out" "$RUN/s1.out"
echo "== phase A2: vae on 9-frame clips ($VAE9_STEPS steps)"
$PY -m imanim_core train vae --preset tiny-puppet --seed "$SEED" --threads 2 --log-every 25 --init "$RUN/vae" \
    --num-frames 9 --max-steps "$VAE9_STEPS" --warmup-steps 20 --out "$RUN/vae9" $(resume "$RUN/vae9") \
    > "$RUN/vae9.out" 2>&1
tail -n 3 "$RUN/vae9.out"
echo "== phase B: stage2 ($S2_STEPS) -> stage3 ($S3_STEPS) || skeleton baseline ($S3_STEPS)"
$PY -m imanim_core.baselines train "${COMMON[@]}" --vae "$RUN/vae9" --max-steps "$S3_STEPS" --out "$RUN/skeleton" \
    $(resume "$RUN/skeleton") > "$RUN/skeleton.out" 2>&1 &
pc=$!
$PY -m imanim_core train stage2 "${COMMON[@]}" --init "$RUN/s1" --vae "$RUN/vae9" --max-steps "$S2_STEPS" \
    --out "$RUN/s2" $(resume "$RUN/s2") > "$RUN/s2.out" 2>&1
tail -n 3 "$RUN/s2.out"
$PY -m imanim_core train stage3 "${COMMON[@]}" --init "$RUN/s2" --max-steps "$S3_STEPS" --out "$RUN/s3" \
    $(resume "$RUN/s3") > "$RUN/s3.out" 2>&1
tail -n 3 "$RUN/s3.out"
wait $pc
tail -n 3 "$RUN/skeleton.out"
echo "== install (fp16)"
$PY -c "import torch; from imanim_core.weights import install_from_export as i; print(i('$RUN/s3/export', dtype=torch.float16))"
$PY -m imanim_core.baselines install "$RUN/skeleton/export"
echo "== done in $(( $(date +%s) - t0 )) s"
