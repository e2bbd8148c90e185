# berth: the two commands a newcomer needs are `make run` and `make test`.
GO      ?= go
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X main.version=$(VERSION)
# go-nvml's header marks calls deprecated that berth does not make.
export CGO_CFLAGS ?= -O2 -g -Wno-deprecated-declarations

PREFIX  ?= /usr/local
DESTDIR ?=

.PHONY: all build install image run test base-image test-deps clean

all: build

# berth itself needs cgo (NVML); the agent must be static, to run in any image.
build:
	$(GO) build -ldflags '$(LDFLAGS)' -o bin/berth ./cmd/berth
	CGO_ENABLED=0 $(GO) build -ldflags '-s -w' -o bin/berth-agent ./cmd/berth-agent

# berth and its agent side by side (berth finds the agent there), the
# systemd unit, and a starting config unless one is there already.
install: build
	install -D -m 0755 bin/berth $(DESTDIR)$(PREFIX)/bin/berth
	install -D -m 0755 bin/berth-agent $(DESTDIR)$(PREFIX)/bin/berth-agent
	install -D -m 0644 deploy/berth.service $(DESTDIR)/etc/systemd/system/berth.service
	test -e $(DESTDIR)/etc/berth/config.yaml || install -D -m 0644 deploy/config.yaml $(DESTDIR)/etc/berth/config.yaml
	@echo "installed; now: systemctl daemon-reload && systemctl enable --now berth"

# berth itself as an image (deploy/Dockerfile says how to run it).
image: build base-image
	docker build -f deploy/Dockerfile -t berth:$(VERSION) -t berth:latest .

# The local base image, made from Debian's packages (no registry needed).
base-image:
	scripts/base-image.sh

# The client tools the tests drive: ssh, rsync, paramiko, curl, ...
test-deps:
	scripts/test-deps.sh

# Run berth with the example config: users' keys in dev/, state in .berth/.
run: build base-image
	scripts/dev-keys.sh
	./bin/berth serve --config config.yaml

# Fuzz targets (package:function), each run for FUZZTIME after the tests;
# their seed corpora are in each package's testdata/fuzz.
FUZZTIME ?= 10s
FUZZ := keys:FuzzAuthorizedKeys keys:FuzzParseOptions config:FuzzDecode config:FuzzSplitLogin verbs:FuzzLookup

test: test-deps base-image
	@unformatted=$$(gofmt -l $$(git ls-files '*.go')); \
	if [ -n "$$unformatted" ]; then echo "gofmt would change: $$unformatted"; exit 1; fi
	$(GO) vet ./...
	$(GO) test -count=1 -timeout 25m ./...
	@for t in $(FUZZ); do \
		echo "fuzz $${t#*:} for $(FUZZTIME)"; \
		$(GO) test -run '^$$' -fuzz "^$${t#*:}$$" -fuzztime $(FUZZTIME) ./$${t%%:*} || exit 1; \
	done

clean:
	rm -rf bin
