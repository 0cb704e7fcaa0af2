# Two commands for a fresh Debian machine with Python 3.11+: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: install system run test lint bench fuzz lock clean

$(STAMP): pyproject.toml requirements.lock scripts/ensure-system.sh
	@scripts/ensure-system.sh python
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c requirements.lock -e '.[test]'
	@touch $(STAMP)

install: $(STAMP)

system:
	@scripts/ensure-system.sh redis

# make run is a local demo: push may reach subscribers on this machine (loopback), which a real
# deployment refuses unless SYNDICATE_PUSH_ALLOW_NETWORKS says otherwise.
run: install system
	SYNDICATE_PUSH_ALLOW_NETWORKS="$${SYNDICATE_PUSH_ALLOW_NETWORKS-127.0.0.0/8,::1/128}" $(BIN)/syndicate serve --demo

# ruff; the import contracts of pyproject.toml (layers, no cycles, a pure domain); mypy (strict) on core,
# domain, the renderers and the other modules listed in pyproject.toml; docker-compose.yml checked without
# Docker (scripts/check-compose.py: the Compose schema subset in deploy/, interpolation, settings, topology).
lint: install
	$(BIN)/ruff check .
	$(BIN)/lint-imports --no-cache
	$(BIN)/mypy
	$(BIN)/python scripts/check-compose.py

# The feed, partner and fast-path tests run twice: with the fast path (the default, as `syndicate serve`
# runs) and without it (SYNDICATE_FAST_PATH=off: every poll through aiohttp's route), for the same answers.
FEED_TESTS := tests/test_feeds_http.py tests/test_partners.py tests/test_fast_path.py tests/test_metrics_and_logs.py \
              tests/test_archives.py

test: install system lint
	@scripts/ensure-system.sh browser
	@scripts/ensure-system.sh nginx
	SYNDICATE_REQUIRE_BROWSER=1 $(BIN)/python -m pytest
	SYNDICATE_FAST_PATH=off $(BIN)/python -m pytest -q $(FEED_TESTS)

# 10,000 fuzzed documents through a real server (tests/test_fuzz.py); prints what was accepted and refused.
fuzz: install system
	SYNDICATE_FUZZ_EXAMPLES=10000 $(BIN)/python -m pytest -q -s -p no:cacheprovider tests/test_fuzz.py

bench: install system
	$(BIN)/python scripts/bench.py

# Write requirements.lock again from a fresh resolution of pyproject.toml's dependencies.
lock:
	rm -rf .lock-venv && $(PYTHON) -m venv .lock-venv && .lock-venv/bin/python -m pip install --quiet -e '.[test]'
	{ echo "# The exact versions make run and make test install (pip constraints); make lock writes this file again."; \
	  .lock-venv/bin/pip freeze --exclude-editable | grep -v '^syndicate'; } > requirements.lock
	rm -rf .lock-venv

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis
