# Sourced by the GPU lease scripts (gpu_session.sh, gpu_paper_session.sh): install the carried wheels
# (.devkit/whl, the few packages that machine lacks) into /tmp/site, put them and the repository on
# PYTHONPATH, and print what the machine has.
if compgen -G ".devkit/whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    .devkit/whl/*.whl && export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>&1
python3 -c "import torch, onnxruntime as o; print('torch', torch.__version__, 'cuda', torch.version.cuda, \
torch.cuda.is_available(), 'ort', o.__version__, o.get_available_providers())"
