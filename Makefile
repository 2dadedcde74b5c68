# cilo: run many isolated environments of one project side by side.
# Every target that touches the kernel runs as root (sudo make ...).

GO      ?= go
# cilo is a small front: it runs commands in envs that are up by itself
# and hands everything else to cilo-core, the CLI. cilo-compose is
# cilo-core built with the compose engine (containerd client, compose-go);
# cilo-core hands compose work to it so its own start stays fast.
BIN     := bin/cilo
BIN_CORE := bin/cilo-core
BIN_COMPOSE := bin/cilo-compose
PKGS    := ./...
FUZZTIME ?= 10s

.PHONY: all build test bench demo lint fuzz setup clean

all: build

build:
	CGO_ENABLED=0 $(GO) build -o $(BIN) ./cmd/cilo
	CGO_ENABLED=0 $(GO) build -o $(BIN_CORE) ./cmd/cilo-core
	CGO_ENABLED=0 $(GO) build -tags cilo_compose -o $(BIN_COMPOSE) ./cmd/cilo-core

# setup installs the Debian packages and starts containerd (idempotent).
setup:
	./scripts/setup.sh

# test is the README's test command: set-up, then every test, root-only and
# containerd-backed ones included.
test: setup build
	$(GO) vet $(PKGS)
	$(GO) vet -tags cilo_compose ./cmd/cilo-core
	$(GO) test -count=1 -timeout 25m $(PKGS)

bench: build
	./scripts/setup.sh --bench
	$(GO) run ./test/bench -cilo $(BIN)

demo: setup build
	./scripts/demo.sh

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt:"; echo "$$out"; exit 1; fi
	$(GO) vet $(PKGS)
	$(GO) vet -tags cilo_compose ./cmd/cilo-core

# fuzz runs every fuzz target for FUZZTIME.
fuzz:
	@for pkg in $$($(GO) list $(PKGS)); do \
		for f in $$($(GO) test -list '^Fuzz' $$pkg | grep '^Fuzz'); do \
			echo "== $$pkg $$f"; \
			$(GO) test -run '^$$' -fuzz "^$$f$$" -fuzztime $(FUZZTIME) $$pkg || exit 1; \
		done; \
	done

clean:
	rm -rf bin
