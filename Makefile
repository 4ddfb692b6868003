# Every target creates .venv from the pinned constraints when it is missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: venv report test test-fast bench clean-venv

$(BIN)/accountability: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[test]'
	touch $@

## Create .venv from the pinned constraints (every other target does it when it is missing).
venv: $(BIN)/accountability

## Run the default compliance report (built-in digits data and the demo's model card, local ephemeral Prefect).
report: $(BIN)/accountability
	$(BIN)/accountability run --model-card deploy/digits-model-card.yaml

## Run the test suite: two pytest workers (one test file each at a time), then the stack tests after the rest
## (the SQLite and the PostgreSQL stack side by side, on ports of their own).
## Exit 5 (nothing collected, e.g. PYTEST_ARGS="-k name") is not a failure of the second part.
test: $(BIN)/accountability
	$(BIN)/python -m pytest -n 2 --dist loadfile -m "not stack" $(PYTEST_ARGS)
	$(BIN)/python -m pytest -n 2 --dist loadfile -m stack $(PYTEST_ARGS) || [ $$? -eq 5 ]

## The tests without the end-to-end flow runs (a minute or two).
test-fast: $(BIN)/accountability
	$(BIN)/python -m pytest -n 2 -m "not slow" $(PYTEST_ARGS)

## Benchmark the DeepSHAP engine against shap.DeepExplainer.
bench: $(BIN)/accountability
	$(BIN)/python tests/benchmarks/bench_deep_shap.py

clean-venv:
	rm -rf $(VENV)
