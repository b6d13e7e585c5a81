# Two commands do everything on a fresh clone (each installs what it needs first):
#   make demo   - the main job: emulated detector -> live denoising service -> subscriber, on CPU
#   make test   - lint (ruff, mypy), then the test suite (what CI runs)
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | sha1sum | cut -c1-12)

.PHONY: demo test lint bench setup clean-venv

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# the CPU build of torch: PyPI's plain torch==2.13.0 is the CUDA build (+18 nvidia-* wheels, GBs).
	# First a local +cpu wheel from the configured indexes / find-links (offline mirrors); failing that,
	# PyTorch's CPU index (on PyPI alone the first command's resolution error is expected). pyproject's
	# torch==2.13.0 then accepts the installed 2.13.0+cpu as it is.
	$(PY) -m pip install -q 'torch==2.13.0+cpu' || \
		$(PY) -m pip install -q torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
	$(PY) -m pip install -q -e '.[dev,train]'
	rm -f $(VENV)/.installed-*
	touch $@

setup: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/sbd-stream demo

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy  # the type gate: sbd_stream, training, benchmarks ([tool.mypy] in pyproject.toml)

test: lint
	$(PY) -m pytest

bench: $(STAMP)
	$(PY) -m benchmarks.bench_denoise

clean-venv:
	rm -rf $(VENV)
