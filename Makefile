# One entry point for people and CI. `make test` works on a fresh machine: it creates the virtualenv
# and installs the package with its dev extra first (skipped when pyproject.toml is unchanged).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
export JSONARGPARSE_DEPRECATION_WARNINGS := off

.PHONY: install test demo demo-frontier compare lint bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install -e '.[dev]'
	touch $(STAMP)

test: $(STAMP)
	WANDB_MODE=offline $(BIN)/python -m pytest -q

demo: $(STAMP)
	$(BIN)/python -m hyperdarts fit --config configs/digits.yaml

# Second stage of the demo: retrain every member of the newest digits family and plot the frontier.
demo-frontier: $(STAMP)
	@family=$$(ls -td runs/digits/*/family.json 2>/dev/null | head -n 1); \
	if [ -z "$$family" ]; then echo "no runs/digits/*/family.json: run 'make demo' first"; exit 2; fi; \
	$(BIN)/python -m hyperdarts frontier --family "$$family" --config configs/digits_retrain.yaml --seeds 0

# hyperdarts against fixed-λ DARTS and parameter-matched random architectures on digits, every
# architecture retrained over 3 seeds (about 35-45 minutes on 2 cores; a rerun reuses what finished).
compare: $(STAMP)
	$(BIN)/python -m hyperdarts compare --config configs/compare_digits.yaml

bench: $(STAMP)
	$(BIN)/python benchmarks/search_step.py --configs digits small --orders 1 2 --mode eager \
	  --out benchmarks/search_step-eager.json
	$(BIN)/python benchmarks/search_step.py --configs digits small --orders 1 2 --mode fast \
	  --out benchmarks/search_step-fast.json

lint: $(STAMP)
	$(BIN)/ruff check hyperdarts tests benchmarks
	$(BIN)/ruff format --check hyperdarts tests benchmarks

clean:
	rm -rf $(VENV) runs .pytest_cache
