# Set-up is two commands on a fresh machine with Python 3.11: `make demo` (the main job) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN = $(VENV)/bin
export HF_HUB_OFFLINE = 1
export HF_DATASETS_OFFLINE = 1

# torch's CPU build from PyTorch's own wheel index: PyPI's Linux torch is the CUDA build (GBs of CUDA
# packages). For a GPU: `make install TORCH_INDEX=https://download.pytorch.org/whl/cuXYZ` with the cuXYZ
# that pytorch.org's install selector names for your CUDA, or install torch into $(VENV) first as it says.
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
TORCH_VERSION ?= 2.13.0

.PHONY: install demo test test-fast leaderboard train-model clean

$(BIN)/vattr-bench: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first, from TORCH_INDEX; where that index cannot be reached, from the default index instead (said
	# aloud: on Linux that is the CUDA build). pyproject's torch range then keeps it.
	$(BIN)/pip install -q --retries 2 --index-url $(TORCH_INDEX) torch==$(TORCH_VERSION) || { \
	  echo "make: torch==$(TORCH_VERSION) from $(TORCH_INDEX) failed (unreachable?); trying the default index" >&2; \
	  $(BIN)/pip install -q torch==$(TORCH_VERSION); }
	$(BIN)/pip install -q -e ".[test]"
	touch $@

install: $(BIN)/vattr-bench

# the main job: the amortized attributor beside baselines and null references, 4 samples per task family
demo: install
	$(BIN)/vattr-bench evaluate --method amortized,attention,input_x_gradient,tam,random,uniform,region_area \
	    --model vattr-tiny --benchmark all --limit 4 --output-dir runs/demo

test: install
	$(BIN)/python -m pytest -q

# everything but the tests marked slow (see pyproject's markers)
test-fast: install
	$(BIN)/python -m pytest -q -m "not slow"

leaderboard: install
	$(BIN)/vattr-bench leaderboard

train-model: install
	$(BIN)/python -m vattr_bench.models.tiny.train

clean:
	rm -rf $(VENV) runs build *.egg-info
