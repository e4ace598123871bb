# Two entry points: `make demo` and `make test`. Both create .venv from nothing when needed.
# torch is pinned to 2.13.0: on this project's machines that is a local CPU wheel (seconds);
# any other version pulls gigabytes of CUDA wheels.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH ?= torch==2.13.0
STAMP := $(VENV)/.installed

.PHONY: demo test install clean-demo teacher browser

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)" numpy
	$(PY) -m pip install -q -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/reasondistill demo --out runs/demo

test: $(STAMP) browser
	HF_HUB_OFFLINE=1 $(PY) -m pytest

# Debian's Chromium for the report's browser test (tests/report/test_html_browser.py skips without it)
browser:
	@command -v chromium >/dev/null 2>&1 || { command -v apt-get >/dev/null 2>&1 && \
	  (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium >/dev/null 2>&1) ; } || \
	  echo "chromium could not be installed: the browser test will be skipped"

clean-demo:
	rm -rf runs/demo

# Re-create the bundled teacher (about 15 minutes on 2 CPU cores).
teacher: $(STAMP)
	$(PY) scripts/train_tiny_teacher.py
