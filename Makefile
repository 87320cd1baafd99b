# Two commands for a fresh clone: `make demo` and `make test`. Both install into .venv when needed.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Any torch build works (CPU or CUDA); it is installed only when the venv has none. Override to choose,
# e.g. make TORCH_SPEC='torch==2.13.0' test, or pre-install your build into .venv.
TORCH_SPEC ?= torch==2.13.0

.PHONY: install demo test bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[test]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/stillwatch demo

test: $(STAMP)
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) -m pip install -q -e ".[bench]"
	for b in bench/*.py; do $(PY) $$b || exit 1; done

clean:
	rm -rf runs .pytest_cache
