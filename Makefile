# Two entry points: `make demo` and `make test`. Both create .venv from nothing when needed, with
# every package at the exact version in requirements.lock (transitive ones, pip and setuptools
# included), so a fresh clone installs today what it installed the day the lock was made.
#
# torch is the CPU build 2.13.0+cpu: on this project's machines that is a local wheel (seconds);
# elsewhere it comes from the PyTorch CPU index (TORCH_WHEELS below). Any other torch pulls
# gigabytes of CUDA wheels.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
LOCK := requirements.lock
STAMP := $(VENV)/.installed
# The packages the lock is made from, beside pyproject.toml's dependencies and extras.
LOCK_INPUTS := 'torch==2.13.0+cpu' 'setuptools>=68' 'pip'
LOCK_EXTRAS := --extra test --extra data --extra bench --extra quantize
# Where `make lock` finds the CPU build of torch: a folder of wheels or a find-links page
# (off this machine: TORCH_WHEELS=https://download.pytorch.org/whl/cpu/torch/).
TORCH_WHEELS ?= /opt/wheels
UV := uv==0.13.9
TOOLS := .venv-tools
LATEST := .venv-latest

.PHONY: demo test install lock test-latest bench bench-quick clean-demo teacher browser

# A new venv each time the lock changes: installing over an old one would keep packages the lock dropped.
$(STAMP): $(LOCK) pyproject.toml Makefile
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --no-deps -r $(LOCK)
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	$(PY) -m pip check
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/reasondistill demo --out runs/demo

# Two pytest workers, a test file each (the 2-core CI machine: 6.5 min instead of 11); TEST_WORKERS=0 runs in one process.
TEST_WORKERS ?= 2
test: $(STAMP) browser
	HF_HUB_OFFLINE=1 $(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile

# The benches in bench/ print JSON; their baselines (TRL) come from the `bench` extra in the lock.
# `make bench` runs every one at full size (the studies take hours); `make bench-quick` the
# throughput comparisons at small sizes (about 6 minutes here), each against its baseline in the same run.
BENCH_LIBS := bench/arms.py
bench: $(STAMP)
	@for b in $(filter-out $(BENCH_LIBS),$(wildcard bench/*.py)); do echo "== $$b"; $(PY) $$b || exit 1; done

bench-quick: $(STAMP)
	OMP_NUM_THREADS=1 $(PY) bench/generate_throughput.py --quick
	OMP_NUM_THREADS=1 $(PY) bench/serve_throughput.py --problems 16
	OMP_NUM_THREADS=1 $(PY) bench/rl_throughput.py --steps 4 --repeats 1
	OMP_NUM_THREADS=1 $(PY) bench/sampler_noise.py
	OMP_NUM_THREADS=1 $(PY) bench/train_throughput.py --quick
	$(PY) bench/kd_memory.py --topk-only

# Regenerate requirements.lock from pyproject.toml's ranges: the newest versions they allow today.
lock:
	test -x $(TOOLS)/bin/uv || { $(PYTHON) -m venv $(TOOLS) && $(TOOLS)/bin/pip install -q "$(UV)"; }
	printf '%s\n' $(LOCK_INPUTS) | $(TOOLS)/bin/uv pip compile pyproject.toml - $(LOCK_EXTRAS) \
	  --find-links $(TORCH_WHEELS) --python-version 3.11 --custom-compile-command "make lock" -o $(LOCK)

# The suite on the newest versions pyproject.toml allows (not the lock), in a venv of its own, to find
# an upstream break before a user does. torch is held at TORCH_LATEST (default: the CPU build this
# machine has; `make test-latest TORCH_LATEST='torch<=2.14.1'` tries the newest on disk, a 5.5 GB CUDA build).
TORCH_LATEST ?= torch==2.13.0
test-latest: browser
	rm -rf $(LATEST)
	$(PYTHON) -m venv $(LATEST)
	$(LATEST)/bin/pip install -q --upgrade pip
	printf '%s\n' "$(TORCH_LATEST)" > $(LATEST)/constraints.txt
	$(LATEST)/bin/pip install -q -c $(LATEST)/constraints.txt --upgrade --upgrade-strategy eager -e ".[test,data,bench]"
	$(LATEST)/bin/pip list --format=freeze > $(LATEST)/versions.txt
	HF_HUB_OFFLINE=1 $(LATEST)/bin/python -m pytest -n $(TEST_WORKERS) --dist loadfile

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
