# cilo: run many isolated environments of one project side by side.
# Every target that touches the kernel runs as root (sudo make ...).

GO      ?= go
BIN     := bin/cilo
# cilo-compose is cilo built with the compose engine (containerd client,
# compose-go); cilo hands compose work to it so its own start stays fast.
BIN_COMPOSE := bin/cilo-compose
PKGS    := ./...
FUZZTIME ?= 10s

.PHONY: all build test bench demo lint fuzz setup clean

all: build

build:
	$(GO) build -o $(BIN) ./cmd/cilo
	$(GO) build -tags cilo_compose -o $(BIN_COMPOSE) ./cmd/cilo

# setup installs the Debian packages and starts containerd (idempotent).
setup:
	./scripts/setup.sh

# test is the README's test command: set-up, then every test, root-only and
# containerd-backed ones included.
test: setup build
	$(GO) vet $(PKGS)
	$(GO) vet -tags cilo_compose ./cmd/cilo
	$(GO) test -count=1 -timeout 25m $(PKGS)

bench: build
	./scripts/setup.sh --bench
	$(GO) run ./test/bench -cilo $(BIN)

demo: setup build
	./scripts/demo.sh

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt:"; echo "$$out"; exit 1; fi
	$(GO) vet $(PKGS)
	$(GO) vet -tags cilo_compose ./cmd/cilo

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
