# The two commands of the README. Both need only Python 3.11+ and make.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test chaos install sandbox status clean bench

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

## make run: the whole system on embedded defaults (Ctrl-C stops everything).
run: $(STAMP)
	$(BIN)/vector-sync up

## make test: the whole suite against real Postgres and Redis (embedded unless configured).
test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

## make chaos: the fault suite (tests/faults/) in its long forms, with production recovery
## settings, printing the figures docs/testing.md quotes. `make test` runs its short forms.
chaos: $(STAMP)
	CHAOS=1 $(BIN)/python -m pytest -s -p no:cacheprovider tests/faults $(PYTEST_ARGS)

sandbox: $(STAMP)
	$(BIN)/vector-sync sandbox

status: $(STAMP)
	$(BIN)/vector-sync status

bench: $(STAMP)
	$(BIN)/python -m benchmarks

clean:
	rm -rf $(VENV) .vector-sync .pytest_cache
