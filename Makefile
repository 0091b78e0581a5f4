# The two commands everyone starts with: `make demo` and `make test`.
# Each creates .venv (Python 3.11) and installs fedscore into it when missing or stale.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

export FLWR_TELEMETRY_ENABLED=0
export FLWR_DISABLE_UPDATE_CHECK=1
export FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1

.PHONY: demo test bench setup clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	@touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/fedscore demo

test: $(STAMP)
	$(BIN)/python -m pytest -n 2 --timeout 900 --durations=15

bench: $(STAMP)
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) out
