# Two entry points for a fresh machine; both set everything up themselves and are idempotent.
#   make demo  - synthetic BridgeData -> convert -> train BC / GC-BC / GC-DDPM-BC -> evaluate
#   make test  - lint + the whole test suite on CPU
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DEMO_DIR ?= demo_output

.PHONY: setup egl demo test lint bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt torch==2.13.0
	$(PY) -m pip install -q -c constraints.txt -e ".[dev,sim]"
	$(MAKE) --no-print-directory egl
	touch $@

# Meta-World renders headless through Mesa EGL (MUJOCO_GL=egl). Installed from Debian only when
# libEGL.so.1 is missing; without apt (or root) this warns and the sim tests will fail to render.
egl:
	@ldconfig -p 2>/dev/null | grep -q 'libEGL\.so\.1 ' || \
		(apt-get update -qq && apt-get install -y -qq libegl1 libegl-mesa0 libgl1-mesa-dri) || \
		echo "warning: could not install Mesa EGL (libegl1 libegl-mesa0 libgl1-mesa-dri)"

demo: setup
	$(VENV)/bin/bridge-torch-demo --out $(DEMO_DIR)

lint: setup
	$(VENV)/bin/ruff check src tests bench

test: lint
	$(PY) -m pytest -q

bench: setup
	$(PY) bench/data.py
	$(PY) bench/train_step.py --batch-size 16
	$(PY) bench/inference.py

clean:
	rm -rf $(VENV) $(DEMO_DIR) .pytest_cache
