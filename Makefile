# vendetta agent. `make run` builds and runs the agent on its built-in
# defaults; `make test` installs what the tests need and runs them all.

CARGO      ?= cargo
MUSL       := x86_64-unknown-linux-musl
STATIC_BIN := target/$(MUSL)/release/vendetta
SUDO       := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: all build run test check lint deps images static bench fuzz clean

all: build

build:
	$(CARGO) build --release --locked

# Builds and runs the agent in the foreground: offline, local API on
# 127.0.0.1:8080, state in /var/lib/vendetta (root) or ~/.local/state/vendetta.
run: build
	./target/release/vendetta agent start

deps:
	$(SUDO) tests/setup/deps.sh

images: deps
	$(SUDO) tests/setup/images.sh

# Everything CI runs: set-up, formatting, lints, unit and integration tests.
test: images lint
	$(CARGO) test --locked --all-targets -- --test-threads=4

lint:
	tests/layers.py --self-test
	tests/layers.py
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --locked --all-targets -- -D warnings
	for page in man/*; do mandoc -T lint -W warning "$$page" || exit 1; done

# The property tests of every parser that takes outside input (command
# JSON, durations, sizes, Docker's stream and HTTP answers, QMP/guest-agent
# lines, JWTs), with many more cases than `make test` runs (256 each),
# within FUZZ_SECONDS. A failure prints its minimal input: keep it as a
# regression test.
FUZZ_CASES   ?= 100000
FUZZ_SECONDS ?= 900
fuzz:
	PROPTEST_CASES=$(FUZZ_CASES) timeout $(FUZZ_SECONDS) $(CARGO) test --locked --release --lib -- prop_

# A stripped, statically linked x86_64 binary: $(STATIC_BIN).
static:
	@rustup target list --installed | grep -qx $(MUSL) || rustup target add $(MUSL)
	@command -v musl-gcc >/dev/null || $(SUDO) apt-get install -y -qq musl-tools
	$(CARGO) build --release --locked --target $(MUSL)
	@ls -l $(STATIC_BIN)

# Speed and memory figures, printed as one table (see README, Performance).
bench: images static
	tests/bench/run.sh $(STATIC_BIN)

clean:
	$(CARGO) clean
