# Two commands for a fresh machine:
#   make demo   — a complete local demo (dev IdP, demo upstream, Portcullis on config/demo.toml)
#   make test   — the whole test suite (unit tests and end-to-end tests with real processes)
# Both install what they need first: the demo cmake (pingora's zlib-ng) and Node.js/npm (the dev
# IdP); the tests also PostgreSQL, which .ci/deps starts for the databroker tests.

CARGO ?= cargo

.PHONY: demo test lint check-configs deps demo-deps

deps:
	@./.ci/deps

demo-deps:
	@./.ci/deps demo

demo: demo-deps
	$(CARGO) build --release -p portcullis -p portcullis-harness --bins
	./target/release/portcullis-demo

test: deps
	$(CARGO) test --workspace

lint: deps
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

check-configs:
	@for f in config/*.toml; do $(CARGO) run -q -p portcullis -- check --config $$f || exit 1; done
