# The two commands of the README: `make demo` and `make test`.
# Both do all the set-up they need on a fresh Debian 12 machine.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: setup test demo bench chaos formal fuzz differential clean

# Debian packages the tests drive for real: the NBD clients and the
# baseline NBD server; strace counts the sim harness's accept() calls
# (tests/test_sim_engine.py); a C compiler and OpenSSL's headers build
# the C skeleton of `tricopy bench floor` (tests/test_bench_floor.py) and,
# with Python's headers, the secondary's native loop (host/native/).
APT_PACKAGES := qemu-utils libnbd-bin fio nbdkit strace gcc libssl-dev python3-dev

$(STAMP): pyproject.toml
	@if [ -n "$(APT_PACKAGES)" ] && ! dpkg -s $(APT_PACKAGES) >/dev/null 2>&1; then \
	    apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y $(APT_PACKAGES); fi
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

setup: $(STAMP)

# The suite's cocotb testbenches and everything else side by side, then the
# tests that time themselves alone (tests/halves.py; TEST_JOBS=1: one after
# the other).
test: setup
	$(BIN)/python tests/halves.py

demo: setup
	$(BIN)/tricopy demo

bench: setup
	$(BIN)/tricopy bench protocol

# A longer chaos run than the suite's 30 rounds (docs/reliability.md, "Chaos").
chaos: setup
	$(BIN)/tricopy chaos --rounds 300

# The formal proofs at a wider pointer width and a deeper induction than
# the suite's (docs/hardware.md, "Formal proofs").
formal: setup
	$(BIN)/python -m tricopy.hdl.formal --spec timestamp --depth 4
	$(BIN)/python -m tricopy.hdl.formal --spec compare
	$(BIN)/python -m tricopy.hdl.formal --width 8 --max-ring-bits 11 --depth 3
	$(BIN)/python -m tricopy.hdl.formal --width 32 --max-ring-bits 10 --depth 3
	$(BIN)/python -m tricopy.hdl.formal --width 8 --desc-batch 64 --max-ring-bits 10 --depth 2
	$(BIN)/python -m tricopy.hdl.formal --width 32 --desc-batch 64 --max-ring-bits 10 --depth 2

# The fuzz targets with FUZZ_SCALE times the suite's examples, new random
# inputs each run (docs/reliability.md, "Fuzzing").
FUZZ_SCALE ?= 20
fuzz: setup
	TRICOPY_FUZZ_SCALE=$(FUZZ_SCALE) $(BIN)/pytest -q tests/fuzz

# The RTL in the sim harness against the model on 10**6 descriptors
# (docs/hardware.md, "Differential run at scale"); SEED replays a failure.
SEED ?= 20261206
differential: setup
	$(BIN)/python -m tricopy.sim.differential --count 1000000 --seed $(SEED)

clean:
	rm -rf $(VENV) build .pytest_cache
