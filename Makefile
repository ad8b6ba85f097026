# Two commands do all the set-up on a fresh machine (see README):
#   make devnet   install into .venv, then run a local network with a demo
#   make test     install (Python + npm dev tools), then lint, type-check, test
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
NPM_STAMP := node_modules/.installed
# Debian's chromium, for the browser test of the gateway's web player
CHROMIUM := /usr/bin/chromium

.PHONY: devnet test lint bench install clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

$(NPM_STAMP): package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $(NPM_STAMP)

# A missing browser is installed where apt-get can (CI runs as root on a clean
# machine); where it cannot, the browser test skips and says why.
$(CHROMIUM):
	@if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
			apt-get install -y -qq --no-install-recommends chromium) \
			|| echo "chromium could not be installed: tests/test_player_browser.py will skip"; \
	else \
		echo "no apt-get as root here: install chromium to run tests/test_player_browser.py"; \
	fi

install: $(STAMP)

devnet: $(STAMP)
	$(BIN)/coliving devnet $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: $(STAMP) $(NPM_STAMP) $(CHROMIUM) lint
	$(BIN)/pytest $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python -m bench.transfer
	$(BIN)/python -m bench.transfer --pin
	$(BIN)/python -m bench.gateway
	$(BIN)/python -m bench.availability
	$(BIN)/python -m bench.gossip
	$(BIN)/python -m bench.clients
	$(BIN)/python -m bench.lagging
	$(BIN)/python -m bench.collect
	$(BIN)/python -m bench.relay
	$(BIN)/python -m bench.transcode
	$(BIN)/python -m bench.upload

clean:
	rm -rf $(VENV) node_modules .mypy_cache .ruff_cache .pytest_cache
