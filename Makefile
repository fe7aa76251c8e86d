# Two commands on a fresh machine: `make train` and `make test`. Both create .venv when needed.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install train test test-fast mutate lint format clean

# Reinstall when the dependencies change; `pip install -e` keeps the code itself live.
# --no-compile: Python compiles the modules a run imports when it first imports them, instead
# of pip compiling all of PyTorch's up front (a third of the install's time).
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-compile -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

## Train the default model on the embedded default data; prints the run directory.
train: $(STAMP)
	$(BIN)/python -m colorizer.run $(ARGS)

# Tests run in TEST_WORKERS processes (pytest-xdist), each handed the next test when it is free:
# much of a test's time is one-threaded (imports, process starts, Lightning's Python, C++
# compilation), so two workers keep two cores busy. TEST_WORKERS=0 runs them in this process.
TEST_WORKERS ?= 2

## Lint, then the whole test suite (slow tests included).
test: $(STAMP) lint
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist worksteal $(ARGS)

## The test suite without slow-marked tests, for quick iteration.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist worksteal -m "not slow" $(ARGS)

# Mutation testing (mutmut, set up in pyproject.toml): each small change to the functions whose
# silent errors users would see or metrics would report must fail one of the fast tests that
# call it. About 30 minutes on two cores, so not part of `make test`; the last result is in
# experiments/mutation/README.md, the surviving mutants and why each is harmless in the README.
MUTATE := 'colorizer.color.*' 'colorizer.metrics.*' 'colorizer.callbacks.*' \
	'colorizer.data.augment.*' 'colorizer.full_resolution.*' \
	'colorizer.inference.x_full_lightness*' 'colorizer.inference.x_merge_full_resolution*' \
	'colorizer.models.base.x*ColorizationModule*training_loss*' \
	'colorizer.models.gan.x*GANColorizer*_patch_loss*' \
	'colorizer.models.gan.x*GANColorizer*optimization_step*'

## Mutation testing of the code users depend on most; lists the mutants no test kills.
mutate: $(STAMP)
	rm -rf mutants
	nice -n 10 $(BIN)/mutmut run $(MUTATE)
	$(BIN)/mutmut results | grep -v "not checked" || true

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf outputs multirun mutants .pytest_cache .ruff_cache
