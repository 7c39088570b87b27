# Two entry points: `make demo` (install, then run the demo) and `make test` (install, then run the tests).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch and torchvision are pinned to the releases this project is tested with.
TORCH := torch==2.14.1 torchvision==0.29.1

.PHONY: install demo test lint clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check $(TORCH)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $@

demo: install
	$(BIN)/lifebench demo

test: install
	$(BIN)/pytest -q

lint: install
	$(BIN)/ruff check src tests bench

clean:
	rm -rf $(VENV) lifebench-demo lifebench-results .pytest_cache
