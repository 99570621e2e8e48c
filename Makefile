# The two set-up commands of the README. Each starts from a fresh clone: it creates .venv, installs, and runs.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
export JAX_PLATFORMS ?= cpu

.PHONY: demo test install install-core clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

# torch is installed first and pinned, so nothing can pull a CUDA build in its place.
# The report test renders a page in headless Chromium: Debian's package, installed where apt-get can.
$(VENV)/.installed: $(PY) pyproject.toml
	$(PIP) install --quiet torch==2.13.0
	$(PIP) install --quiet -e ".[test,tpu]"
	command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium) >/dev/null 2>&1 \
	  || echo "Chromium could not be installed: the report rendering test will be skipped"
	touch $@

# The demo needs the package alone: no PyTorch, no test or TPU extras.
$(VENV)/.installed-core: $(PY) pyproject.toml
	$(PIP) install --quiet -e .
	touch $@

install: $(VENV)/.installed
install-core: $(VENV)/.installed-core

# Trains the tiny reward model on the shapes world and prints how well it judges held-out records (launch/shapes_demo.py).
demo: install-core
	$(PY) -m launch.shapes_demo --workdir=shapes_run

# pytest exits 5 when it collected no tests: that is a failure here, never a silent pass. Test files run in
# TEST_WORKERS processes (pytest-xdist), each file whole in one, so its module fixtures are built once.
TEST_WORKERS ?= 2
test: install
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile tests; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests"; exit 1; fi; exit $$rc

clean:
	rm -rf $(VENV) .pytest_cache
