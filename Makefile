# Every target creates .venv from the pinned constraints when it is missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: report test bench clean-venv

$(BIN)/accountability: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[test]'
	touch $@

## Run the default compliance report (built-in digits data, local ephemeral Prefect).
report: $(BIN)/accountability
	$(BIN)/accountability run

## Run the test suite.
test: $(BIN)/accountability
	$(BIN)/python -m pytest $(PYTEST_ARGS)

## Benchmark the DeepSHAP engine against shap.DeepExplainer.
bench: $(BIN)/accountability
	$(BIN)/python tests/benchmarks/bench_deep_shap.py

clean-venv:
	rm -rf $(VENV)
