# The two set-up commands of the README: `make demo` (main job) and `make test`. Each creates .venv if missing.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast lint bench clean

$(STAMP): pyproject.toml requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	# test-only: the original LDM UNetModel; its pinned requirements are heavy and old, and einops suffices
	$(PY) -m pip install --quiet --no-deps stable-diffusion-sdkit==2.1.5
	# test-only: ComfyUI's model code imports torchvision. The registry's build for torch 2.13 is a CUDA build that
	# breaks transformers' imports on a CPU torch, so it goes into its own folder, on the path of the ComfyUI
	# subprocesses only (tests/comfy_host.py)
	$(PY) -m pip install --quiet --no-deps --target $(VENV)/comfyui-extras torchvision==0.28.0
	$(PY) -m pip install --quiet --no-deps -e .
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m freeu demo

test: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	# tests/apps/test_ui.py drives Debian's chromium headless (skipped without it); installed where we may, never fatal
	command -v chromium >/dev/null || (command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] && apt-get install -y -qq chromium >/dev/null) || true
	$(PY) -m pytest -q

# the fast part: everything but the torch.compile and multi-process tests (marked slow)
test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

bench: $(STAMP)
	$(PY) benchmarks/run_all.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .ruff_cache
