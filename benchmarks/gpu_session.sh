#!/usr/bin/env bash
# One call on a lent GPU machine (a 15-minute lease): full K2 frames at bin 4 through the batch stage and
# its faster paths (benchmarks/bench_gpu_k2.py, issue 24: ~3.5 min), the GPU recipe's train / export /
# TensorRT steps on the detector training set (its minutes cut to what is left of the call, CALL_S), then
# the GPU tests and the capacity benchmark on the GPU. Without the K2 step this is what ran
# on the H200 in session 5 (docs/training.md "GPU runs"; records in benchmarks/results/gpu-recipe/ and
# bench_capacity_h200_*.json, summary: python -m benchmarks.gpu_session_report). The engine it trains
# is then scored on a CPU machine:
#   sbd-train evaluate-detector --engine "wide=engines/<name>" --max-test-images 24
#
# Needs: the repo, data/detector.h5 (or .devkit/detector-q.h5 from `python -m benchmarks.gpu_data_pack pack`: a quantised copy
# that fits a 64 MiB transfer; see docs/training.md), python3 with CUDA torch, and .devkit/whl/*.whl
# for the packages the machine lacks (pydantic, pydantic-core, annotated-types, typing-inspection,
# pydantic-settings, python-dotenv, pyzmq; cp312 manylinux wheels). Everything kept goes to $OUT.
#   OUT=out TRAIN_MINUTES=6 bash benchmarks/gpu_session.sh
# Continue a run: carry runs/<name> too and give NAME=<name> (the recipe resumes its last.pt; the
# cosine restarts over the new, longer budget). STEPS picks steps (default k2,recipe,tests,capacity);
# STEPS=k2,tests is the K2 measurement alone (~5 min; data/detector.h5 is then not needed):
#   OUT=out STEPS=k2,tests bash benchmarks/gpu_session.sh
set -u
OUT=${OUT:-gpu-session-out}
MIN=${TRAIN_MINUTES:-6}
STOP_AFTER=${STOP_AFTER:-480}  # seconds: later steps are skipped past this (the lease's one call is 600 s)
CALL_S=${CALL_S:-590}  # the recipe's training minutes shrink so that it ends within this
NAME=${NAME:-sbd-unet4x64-gpu}
MODEL=${MODEL:-wide}
EXTRA=${RECIPE_EXTRA:-}
STEPS=${STEPS:-k2,recipe,tests,capacity}
K2_BUDGET=${K2_BUDGET:-180}  # seconds of K2 variants; what would start later is recorded as skipped
mkdir -p "$OUT"
exec > >(tee -a "$OUT/session.log") 2>&1
export PYTHONUNBUFFERED=1
t0=$(date +%s)
stamp() { echo "=== $(( $(date +%s) - t0 )) s: $*"; }
in_time() { [ $(( $(date +%s) - t0 )) -lt "$STOP_AFTER" ] || { stamp "skipped, out of time: $*"; false; }; }
want() { case ",$STEPS," in *",$1,"*) true ;; *) stamp "not in STEPS: $1"; false ;; esac; }

stamp setup
source "$(dirname "${BASH_SOURCE[0]}")/gpu_lease_setup.sh"
nproc

if want k2; then
  stamp "K2 bin 4: product path and faster paths (bench_gpu_k2)"
  timeout $((K2_BUDGET + 60)) python3 -m benchmarks.bench_gpu_k2 --model sbd-unet4-detector \
    --batch 1,4,8,16 --seconds 2 --budget-s "$K2_BUDGET" --out "$OUT/bench_gpu_k2.json" \
    --note "GPU session: $(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)" 2>&1 | tail -60
fi

if want recipe; then
  # the training minutes shrink to what is left of the call (export etc. take up to ~3 min more)
  MIN=$(python3 -c "print(round(min($MIN, ($CALL_S - $(date +%s) + $t0 - 180) / 60), 1))")
  if python3 -c "import sys; sys.exit(0 if $MIN >= 1 else 1)"; then
    mkdir -p data
    [ -f data/detector.h5 ] || python3 -m benchmarks.gpu_data_pack unpack .devkit/detector-q.h5 data/detector.h5
    stamp "train $MODEL for $MIN min"
    (nvidia-smi --query-gpu=utilization.gpu,memory.used,power.draw --format=csv,noheader -l 60 2>/dev/null &
     echo $! > /tmp/smi.pid)
    timeout $(python3 -c "print(int($MIN*60+180))") python3 -m training.cli gpu-recipe \
      --steps train,export,tensorrt --model "$MODEL" --name "$NAME" --data data/detector.h5 \
      --max-minutes "$MIN" --no-card-metrics --results "$OUT/recipe" --extra-worlds "" $EXTRA
    echo "recipe rc=$?"
    kill "$(cat /tmp/smi.pid)" 2>/dev/null
    tar cf "$OUT/run.tar" runs/"$NAME" 2>&1
    [ -d engines/"$NAME" ] && tar cf "$OUT/engine.tar" engines/"$NAME"
    ls -la "$OUT"
  else
    stamp "skipped, out of time: recipe (under a minute of training left)"
  fi
fi

want tests && stamp "GPU tests" && in_time "GPU tests" && timeout 160 python3 -m pytest -q -p no:cacheprovider \
  -rs tests/unit/test_engines.py tests/unit/test_batch_stage.py tests/unit/test_tiling.py \
  tests/unit/test_likelihood.py tests/unit/test_binning.py \
  tests/integration/test_bench_gpu_k2.py::test_gpu_variants_match_the_product_path 2>&1 | tail -25

want capacity && stamp "capacity on the GPU" && \
for eng in "engines/$NAME" sbd-unet4-detector; do
  [ -e "$eng" ] || [ "$eng" = sbd-unet4-detector ] || continue
  in_time "capacity of $eng" || break
  tag=$(basename "$eng")
  rm -f benchmarks/results/bench_capacity.json
  timeout 75 python3 -m benchmarks.bench_capacity --model "$eng" --engine auto --sizes 1024,k2 \
    --bins 1,4 --min-seconds 1 --scaling-frames 96 --batch 8 \
    --note "GPU session: $(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)" 2>&1 | tail -30
  cp benchmarks/results/bench_capacity.json "$OUT/bench_capacity_gpu_$tag.json" 2>/dev/null
done
stamp done
