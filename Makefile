# The two set-up commands of the README: `make demo` (main job) and `make test`. Each creates .venv if missing.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_STAMP := $(VENV)/.demo-installed
WEIGHTS := packages/demo-weights
# test-only: the real Forge runs in an environment of its own (tests/forge_host.py), built from the requirements of
# the Forge snapshot beside the repository when there is one
FORGE_SNAPSHOT := $(lastword $(sort $(wildcard ../shared/vendor/forge-*.tar.gz)))
FORGE_VENV := $(VENV)/forge
FORGE_STAMP := $(FORGE_VENV)/.installed
FORGE_ENV := $(if $(FORGE_SNAPSHOT),$(FORGE_STAMP))

.PHONY: demo test test-fast lint bench clean comfyui-pack forge-extension

# the demo alone: torch (the CPU build on disk), the library with its demo extra and the weights distribution, at the
# versions requirements-dev.txt pins; nothing the demo does not use
$(DEMO_STAMP): pyproject.toml requirements-dev.txt $(WEIGHTS)/pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c requirements-dev.txt torch -e '.[demo]' -e $(WEIGHTS)
	touch $(DEMO_STAMP)

$(STAMP): $(DEMO_STAMP) pyproject.toml requirements-dev.txt
	$(PY) -m pip install --quiet -r requirements-dev.txt
	# test-only: the original LDM UNetModel; its pinned requirements are heavy and old, and einops suffices
	$(PY) -m pip install --quiet --no-deps stable-diffusion-sdkit==2.1.5
	# test-only: ComfyUI's model code imports torchvision. The registry's build for torch 2.13 is a CUDA build that
	# breaks transformers' imports on a CPU torch, so it goes into its own folder, on the path of the ComfyUI
	# subprocesses only (tests/comfy_host.py)
	$(PY) -m pip install --quiet --no-deps --target $(VENV)/comfyui-extras torchvision==0.28.0
	$(PY) -m pip install --quiet --no-deps -e . -e $(WEIGHTS)
	touch $(STAMP)

# Forge pins gradio 4, transformers 4.46, numpy 1.26 (not the test environment's). Its torch line is left out
# (2.13.0, the CPU build on disk, instead), so is its setuptools 69 (torch 2.13 needs >= 77, and Forge imports
# pkg_resources, which setuptools 81 drops: 80.9.0 fits both). torchvision, which Forge imports but does not pin,
# is the build for torch 2.13, --no-deps (tests/hosts/forge_setup.py makes it importable on a CPU torch).
$(FORGE_STAMP): $(FORGE_SNAPSHOT) pyproject.toml
	test -x $(FORGE_VENV)/bin/python || $(PYTHON) -m venv $(FORGE_VENV)
	$(FORGE_VENV)/bin/python -m pip install --quiet torch==2.13.0 setuptools==80.9.0
	$(FORGE_VENV)/bin/python -m pip install --quiet --no-deps torchvision==0.28.0
	tar -xzOf $(FORGE_SNAPSHOT) stable-diffusion-webui-forge/requirements_versions.txt \
		| grep -vE '^(torch|setuptools)\b' > $(FORGE_VENV)/forge-requirements.txt
	echo torch==2.13.0 > $(FORGE_VENV)/forge-constraints.txt
	$(FORGE_VENV)/bin/python -m pip install --quiet -r $(FORGE_VENV)/forge-requirements.txt setuptools==80.9.0 \
		joblib -c $(FORGE_VENV)/forge-constraints.txt
	$(FORGE_VENV)/bin/python -m pip install --quiet --no-deps -e .
	touch $(FORGE_STAMP)

demo: $(DEMO_STAMP)
	$(PY) -m freeu demo

test: $(STAMP) $(FORGE_ENV)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	# tests/apps/test_ui.py drives Debian's chromium headless (skipped without it); installed where we may, never fatal
	command -v chromium >/dev/null || (command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] && apt-get install -y -qq chromium >/dev/null) || true
	$(PY) -m pytest -q

# the fast part: everything but the torch.compile and multi-process tests (marked slow)
test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

# the ComfyUI pack as ComfyUI Manager and the Comfy Registry receive it: dist/comfyui/freeu/ and its zip
comfyui-pack:
	$(PYTHON) tools/export_hosts.py comfyui dist/comfyui

# the Forge extension as its own git repository (for "Install from URL"): dist/forge/freeu
forge-extension:
	$(PYTHON) tools/export_hosts.py forge dist/forge

bench: $(STAMP)
	$(PY) benchmarks/run_all.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .ruff_cache
