# The two set-up commands of the README. Each starts from a fresh clone: it creates .venv, installs, and runs.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
export JAX_PLATFORMS ?= cpu

.PHONY: demo test install clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

# torch is installed first and pinned, so nothing can pull a CUDA build in its place.
$(VENV)/.installed: $(PY) pyproject.toml
	$(PIP) install --quiet torch==2.13.0
	$(PIP) install --quiet -e ".[test,tpu]"
	touch $@

install: $(VENV)/.installed

demo: install
	$(PY) -m launch.demo

# pytest exits 5 when it collected no tests: that is a failure here, never a silent pass.
test: install
	$(PY) -m pytest -q tests; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests"; exit 1; fi; exit $$rc

clean:
	rm -rf $(VENV) .pytest_cache
