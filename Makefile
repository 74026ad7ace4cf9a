# Set-up is two commands on a fresh machine with Python 3.11: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN = $(VENV)/bin
export HF_HUB_OFFLINE = 1
export HF_DATASETS_OFFLINE = 1

.PHONY: install demo test leaderboard train-model clean

$(BIN)/vattr-bench: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first, pinned, so nothing later can pull a CUDA build
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[test]"
	touch $@

install: $(BIN)/vattr-bench

demo: install
	$(BIN)/vattr-bench generate --model vattr-tiny --benchmark all --limit 20 --output-dir runs/demo

test: install
	$(BIN)/python -m pytest -q

leaderboard: install
	$(BIN)/vattr-bench leaderboard

train-model: install
	$(BIN)/python -m vattr_bench.models.tiny.train

clean:
	rm -rf $(VENV) runs build *.egg-info
