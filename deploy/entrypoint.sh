#!/bin/sh
# Container entry: build (or find cached) the TensorRT plan for THIS GPU, then run sbd-stream.
# Plans are tied to the GPU model, CUDA and TensorRT version that build them, so they are made at first
# start on the target machine and cached in $SBD_CACHE_DIR (a volume), never shipped in the image.
set -eu
# The engine served is the one whose plan is built: SBD_ENGINE names both (default: the live engine a
# GPU runs, engines/card.py DEFAULT_ENGINE), so no start builds a plan the service then never uses.
ENGINE="${SBD_ENGINE:-sbd-unet4-paper-twins}"
# serve loads fp16 plans only (sbd_stream/service/build.py): SBD_PRECISION=fp32 built a plan nothing used,
# and serve then compiled its fp16 plan at start as well (minutes), so any other value is refused
if [ "${1:-serve}" = "serve" ] && [ "${SBD_PRECISION:-fp16}" != "fp16" ]; then
    echo "sbd-entrypoint: error: SBD_PRECISION=${SBD_PRECISION}: serve loads fp16 TensorRT plans only; unset it" >&2
    exit 2
fi
if [ "${1:-serve}" = "serve" ] && [ "${SBD_SKIP_ENGINE_BUILD:-0}" != "1" ]; then
    echo "sbd-entrypoint: preparing TensorRT plan for engine ${ENGINE} (cached after the first start)"
    sbd-train build-engine "${SBD_ENGINE_DIR}/${ENGINE}" --precision fp16
fi
if [ "${1:-serve}" = "serve" ]; then
    # not `shift || true`: under dash (/bin/sh of the Ubuntu base image) a failing special builtin ends a
    # non-interactive shell before `|| true` runs: no arguments exited 2 (tests/unit/test_entrypoint_dash.py)
    if [ "$#" -gt 0 ]; then shift; fi
    exec sbd-stream serve --config /etc/sbd-stream/sbd-stream.toml --model "${SBD_ENGINE_DIR}/${ENGINE}" "$@"
fi
exec "$@"
