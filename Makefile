# Two commands do all the set-up on a fresh machine (Python 3.10+ with pip and a C compiler):
#   make demo   optimize the sentiment task with the embedded model (installs on first use)
#   make test   run the test suite (installs on first use)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# llama.cpp is compiled for x86-64 with AVX2 instead of -march=native: native builds (AVX-512/AMX
# kernels) crashed in batched prompt decoding on our 2-core CI machines.
export CMAKE_ARGS ?= -DGGML_NATIVE=OFF
TORCH ?= torch==2.13.0
DEMO_ARGS ?= --dev-limit 200 --test-limit 200 --max-calls 300

.PHONY: install postgres chromium demo test test-slow clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	# torch's CPU build first (2.13.0 lies in this machine's wheel folder); a bare `torch` pulls CUDA
	$(BIN)/python -m pip install $(TORCH)
	$(BIN)/python -m pip install -e '.[test]'
	touch $@

demo: install
	$(BIN)/autoprompt optimize tasks/sentiment.py $(DEMO_ARGS)

# the multi-process tests start a real PostgreSQL server (Debian's package) on loopback
postgres:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || \
		(apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y postgresql) || \
		(echo "install Debian's postgresql package (as root: apt-get install postgresql)"; exit 1)

# the page tests (decide's report) drive Debian's chromium with Playwright; no browser download
chromium:
	@command -v chromium >/dev/null 2>&1 || \
		(apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium) || \
		(echo "install Debian's chromium package (as root: apt-get install chromium)"; exit 1)

test: install postgres chromium
	$(BIN)/python -m pytest

test-slow: install
	$(BIN)/python -m pytest -m slow

clean:
	rm -rf $(VENV) runs
