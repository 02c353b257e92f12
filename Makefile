# Two commands on a fresh machine: `make demo` and `make test`; `make lab` opens the notebooks.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# one stamp per set of extras: `make demo` installs the project alone, `make lab` adds the
# notebook front end, `make test` the test tools (Playwright, pytest...), which users never need
CREATED    := $(VENV)/.created
STAMP      := $(VENV)/.installed
LAB_STAMP  := $(VENV)/.installed-notebook
TEST_STAMP := $(VENV)/.installed-test

.PHONY: demo lab test lint format bench clean notebook-data notebook-test notebooks

# The notebooks are tested against a demo dataset built by the real pipeline (embedded
# nats-server, seeded simulator, ingestor) with a fixed seed and base date, on free ports so
# a developer's running ingestor is never touched.
NOTEBOOK_DATA := build/notebook-data
NOTEBOOKS     := $(sort $(wildcard notebooks/*.ipynb))
DEMO_ARGS     := --seed 7 --users 20 --days 7 --base-date 2026-01-05T00:00:00Z
FREE_PORT     = $(BIN)/python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
NOTEBOOK_ENV  = WORKBENCH_DATA_DIR=$(CURDIR)/$(NOTEBOOK_DATA) WORKBENCH_HTTP_URL= WORKBENCH_NATS_URL=

$(CREATED):
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	touch $@

$(STAMP): pyproject.toml $(CREATED)
	$(BIN)/pip install --quiet -e .
	touch $@

$(LAB_STAMP): pyproject.toml $(CREATED)
	$(BIN)/pip install --quiet -e '.[notebook]'
	touch $@ $(STAMP)

$(TEST_STAMP): pyproject.toml $(CREATED)
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@ $(STAMP)

demo: $(STAMP)
	$(BIN)/ingestor demo

# JupyterLab on the notebooks, reading ./data (the demo's data, made first when there is
# none). The notebooks are pointed at a running ingestor's default ports too: while
# `.venv/bin/ingestor run` runs (in another terminal), they read it live and Confirm and
# Restore publish verdicts; without it they read the files and say that verdicts need it.
LAB_DATA     ?= $(CURDIR)/data
LAB_HTTP_URL ?= http://127.0.0.1:3857
LAB_NATS_URL ?= nats://127.0.0.1:4222
LAB_ARGS     ?=
lab: $(LAB_STAMP)
	@test -d $(LAB_DATA)/archive || DATA_DIR=$(LAB_DATA) $(BIN)/ingestor demo
	WORKBENCH_DATA_DIR=$(LAB_DATA) WORKBENCH_HTTP_URL=$(LAB_HTTP_URL) \
	WORKBENCH_NATS_URL=$(LAB_NATS_URL) $(BIN)/jupyter lab --ServerApp.root_dir=notebooks \
	$(if $(filter 0,$(shell id -u)),--allow-root) $(LAB_ARGS)

test: $(TEST_STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pytest -q
	$(MAKE) --no-print-directory notebook-test

# every notebook runs; cells marked NBVAL_CHECK_OUTPUT must print what the .ipynb stores
notebook-test: notebook-data
	$(NOTEBOOK_ENV) $(BIN)/pytest -q -p no:cacheprovider --nbval-lax --nbval-current-env $(NOTEBOOKS)

notebook-data: $(TEST_STAMP)
	rm -rf $(NOTEBOOK_DATA) && mkdir -p $(dir $(NOTEBOOK_DATA))
	DATA_DIR=$(NOTEBOOK_DATA) DUCKDB_PATH=$(NOTEBOOK_DATA)/analytics.duckdb \
	ARCHIVE_DIR=$(NOTEBOOK_DATA)/archive NATS_STORE_DIR=$(NOTEBOOK_DATA)/nats/jetstream \
	NATS_ENABLED=true NATS_EVENT_SOURCING=true NATS_EMBEDDED=true DEDUP_TOLERANCE=10s \
	NATS_URL=nats://127.0.0.1:$$($(FREE_PORT)) HTTP_PORT=$$($(FREE_PORT)) \
	$(BIN)/ingestor demo $(DEMO_ARGS) > $(NOTEBOOK_DATA).log 2>&1 || { cat $(NOTEBOOK_DATA).log; exit 1; }

# re-run the notebooks against the demo dataset and store their outputs (after an edit of a
# notebook, or when a checked figure changed on purpose): the pairs are synced, then each
# .ipynb is executed, with no timings or widget state to churn the diff
notebooks: notebook-data
	$(BIN)/jupytext --sync $(NOTEBOOKS)
	for notebook in $(NOTEBOOKS); do \
	  $(NOTEBOOK_ENV) $(BIN)/jupyter nbconvert --to notebook --execute --inplace \
	    --ExecutePreprocessor.record_timing=False --ExecutePreprocessor.store_widget_state=False \
	    $$notebook && \
	  $(BIN)/jupyter nbconvert --coalesce-streams --inplace $$notebook || exit 1; \
	done
	$(BIN)/jupytext --sync $(NOTEBOOKS)

lint: $(TEST_STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(TEST_STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: $(TEST_STAMP)
	$(BIN)/python bench/ingest.py

clean:
	rm -rf $(VENV) data build .pytest_cache
