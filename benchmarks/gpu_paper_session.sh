#!/usr/bin/env bash
# One call on a lent GPU (issue 22): the engines trained on the paper's worlds, side by side on one GPU.
#   quality: the 4 x 64 network (FoV 245 px = 59 A, `paper-quality`) from scratch, exported as
#            sbd-unet4x64-paper-gpu: installing it as QUALITY_ENGINE (what `auto` picks offline on a GPU)
#            is a separate step (`sbd-train install-quality engines/sbd-unet4x64-paper-gpu`: the checks of
#            tests/e2e/test_engine_quality.py first), after the user frames too;
#   live:    the shipped 4 x 16 engine (`paper-live-twins`) continued from its committed weights;
#   fast:    the CPU live engine (`paper-fast-twins`, 2 x 2 blocks) likewise (FAST_NAME= leaves it out).
# All in bf16 autocast (channels-last), 16 frames of 208^2 per step, a cosine over TRAIN_MINUTES, on the
# worlds carried packed in .devkit/ (abTEM and Dask are not on that machine; the transfer is 64 MiB):
#   python -m benchmarks.gpu_data_pack pack data/paper.h5 .devkit/paper-q.h5 --every 3
#   python -m benchmarks.gpu_data_pack pack data/paper-twins.h5 .devkit/paper.paper-twins-q.h5 --every 3
#   (any .devkit/paper.<world>-q.h5 joins training as that extra world; twinned particles drawn twice as often)
# and the few Python packages the machine lacks as wheels in .devkit/whl (docs/training.md "GPU runs").
# A whole world is more than one transfer: pack it in parts (--every N --offset k) and carry one part per
# call on the same warm machine with CARRY_ONLY=1 (unpack, add to data/, stop; a part already there is
# skipped); the last call trains on everything unpacked so far. The quality run can continue an engine
# (QUALITY_INIT=sbd-unet4x64-paper-ft) with QUALITY_BATCH frames per step (GPU default 16), QUALITY_LR and the
# orientation term QUALITY_EQUIV (a from-scratch run on a quarter of the world drew a glow, session 16);
# QUALITY_EXTRA adds any other gpu-recipe option to it, after the script's own, so it wins
# (QUALITY_EXTRA="--channels 128": a wider network; "--val-every 2000": fewer validations).
# Everything kept goes to $OUT: session.log and one archive (engines, run logs and configs, the recipe
# summaries, nvidia-smi samples, the GPU tests' log). Scored afterwards on a CPU machine (evaluate-images,
# evaluate-detector), never on the machine that trained.
#   OUT=out TRAIN_MINUTES=6.5 bash benchmarks/gpu_paper_session.sh
# A CPU smoke run of the same script (tests/integration/test_gpu_paper_session.py):
#   RECIPE_EXTRA="--allow-cpu --device cpu --max-steps 2 --threads 1" TESTS=0 bash benchmarks/gpu_paper_session.sh
set -u
OUT=${OUT:-gpu-paper-out}
MIN=${TRAIN_MINUTES:-6.5}
CALL_S=${CALL_S:-570}      # the call's limit: training shrinks so that export and packing end inside it
TAIL_S=${TAIL_S:-110}      # seconds kept for the last validations, the exports and the archive
QUALITY=${QUALITY_NAME:-sbd-unet4x64-paper-gpu}
LIVE=${LIVE_NAME:-sbd-unet4-paper-gpu}
LIVE_INIT=${LIVE_INIT:-sbd-unet4-paper-twins}
FAST=${FAST_NAME-sbd-unet3s2-paper-gpu}
FAST_INIT=${FAST_INIT:-sbd-unet3s2-paper-twins}
mkdir -p "$OUT" data runs
exec > >(tee -a "$OUT/session.log") 2>&1
export PYTHONUNBUFFERED=1
t0=$(date +%s)
stamp() { echo "=== $(( $(date +%s) - t0 )) s: $*"; }

stamp setup
source "$(dirname "${BASH_SOURCE[0]}")/gpu_lease_setup.sh"

stamp "unpack the carried worlds"
# (explicit pids for wait: a bare `wait` would also wait for the tee above, which never ends)
python3 -m benchmarks.gpu_data_pack unpack .devkit/paper-q.h5 data/paper.h5 --append &
pids=($!); worlds=""; weights=""
for f in .devkit/paper.*-q.h5; do
  [ -e "$f" ] || continue
  w=$(basename "$f" -q.h5); w=${w#paper.}
  python3 -m benchmarks.gpu_data_pack unpack "$f" "data/paper.$w.h5" --append &
  pids+=($!)
  worlds="$worlds${worlds:+,}$w"
  case "$w" in *twins*) weights="$weights${weights:+,}2" ;; *) weights="$weights${weights:+,}1" ;; esac
done
for p in "${pids[@]}"; do wait "$p" || { echo "unpack failed"; exit 3; }; done
ls -la data/
stamp "extra worlds: ${worlds:-none} (weights ${weights:-none})"
if [ "${CARRY_ONLY:-0}" = 1 ]; then stamp "carry only: done"; exit 0; fi

MIN=$(python3 -c "print(round(min($MIN, ($CALL_S - $TAIL_S - $(date +%s) + $t0 - 40) / 60), 2))")
stamp "train the engines for $MIN min"
(nvidia-smi --query-gpu=utilization.gpu,memory.used,power.draw --format=csv,noheader -l 30 >"$OUT/smi.log" 2>&1 &
 echo $! >/tmp/smi.pid)
common=(--steps train,export --data data/paper.h5 --extra-worlds "$worlds" --max-minutes "$MIN" --amp bf16
        --no-card-metrics ${RECIPE_EXTRA:-})
[ -n "$weights" ] && common+=(--extra-weights "$weights")
qopts=()
[ -n "${QUALITY_BATCH:-}" ] && qopts+=(--batch "$QUALITY_BATCH")
[ -n "${QUALITY_INIT:-}" ] && qopts+=(--init-from "$QUALITY_INIT")
[ -n "${QUALITY_LR:-}" ] && qopts+=(--lr "$QUALITY_LR")
[ -n "${QUALITY_EQUIV:-}" ] && qopts+=(--equivariance-weight "$QUALITY_EQUIV")
# shellcheck disable=SC2206  # word splitting wanted: e.g. QUALITY_EXTRA="--channels 128" for a wider network
qopts+=(${QUALITY_EXTRA:-})
python3 -m training.cli gpu-recipe "${common[@]}" --train-preset paper-quality --name "$QUALITY" \
  --val-every 500 "${qopts[@]}" --results "$OUT/quality" >"$OUT/quality.log" 2>&1 &
pq=$!
python3 -m training.cli gpu-recipe "${common[@]}" --train-preset paper-live-twins --init-from "$LIVE_INIT" \
  --name "$LIVE" --val-every 1000 --results "$OUT/live" >"$OUT/live.log" 2>&1 &
pl=$!
pf=""
if [ -n "$FAST" ]; then
  python3 -m training.cli gpu-recipe "${common[@]}" --train-preset paper-fast-twins --init-from "$FAST_INIT" \
    --name "$FAST" --val-every 1000 --results "$OUT/fast" >"$OUT/fast.log" 2>&1 &
  pf=$!
fi
# the GPU-only tests beside them (CPU side mostly; they skip what needs TensorRT)
pt=""
if [ "${TESTS:-1}" = 1 ]; then
  timeout 240 python3 -m pytest -q -p no:cacheprovider -rs tests/unit/test_engines.py \
    tests/unit/test_batch_stage.py tests/unit/test_tiling.py >"$OUT/gpu_tests.log" 2>&1 &
  pt=$!
fi
wait $pq; echo "quality rc=$?"; wait $pl; echo "live rc=$?"
[ -n "$pf" ] && { wait "$pf"; echo "fast rc=$?"; }
[ -n "$pt" ] && { wait "$pt"; echo "gpu tests rc=$?"; }
kill "$(cat /tmp/smi.pid)" 2>/dev/null
tail -n 4 "$OUT"/*.log
stamp "archive"
keep=()
for n in "$QUALITY" "$LIVE" $FAST; do keep+=(engines/"$n" runs/"$n"/{log.jsonl,summary.json,config.json}); done
tar czf "$OUT/paper_session.tgz" --ignore-failed-read "${keep[@]}" "$OUT"/quality "$OUT"/live "$OUT"/fast \
  "$OUT"/smi.log 2>&1 && rm -rf "$OUT"/quality "$OUT"/live "$OUT"/fast "$OUT"/smi.log
ls -la "$OUT"
stamp done
