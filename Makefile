GO ?= go
VERSION ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X github.com/siteserver/siteserver/internal/obs.Version=$(VERSION)
# Static binary: the SQLite driver is pure Go, so cgo is not needed anywhere.
export CGO_ENABLED ?= 0

.PHONY: run test build package vet fuzz bench chaos deps clean

# A standalone site (site services + embedded NS) on unprivileged ports, data in ./data.
run: build
	@echo "NS API:  https://127.0.0.1:50443   (admin: ./bin/siteserver sites list -data data/standalone)"
	@echo "metrics: http://127.0.0.1:9351/metrics  /healthz  /readyz"
	./bin/siteserver serve -config examples/standalone.yaml

build:
	$(GO) build -trimpath -ldflags "$(LDFLAGS)" -o bin/siteserver ./cmd/siteserver

# The .deb and .rpm in bin/package/: the static binary, the systemd units, the configs in
# /etc/siteserver, the man page, shell completions, the Grafana dashboard and alert rules. nfpm is a tool of its own module (packaging/tools), so
# its dependencies stay out of the binary's go.mod.
PACKAGE_DIR ?= bin/package
PKG_VERSION = $(shell packaging/version.sh $(VERSION))
SOURCE_DATE_EPOCH = $(shell git log -1 --format=%ct 2>/dev/null || date +%s)
package: export CGO_ENABLED := 0
package: build
	mkdir -p $(PACKAGE_DIR)
	$(GO) -C packaging/tools build -o $(CURDIR)/bin/nfpm github.com/goreleaser/nfpm/v2/cmd/nfpm
	sed -e 's/@VERSION@/$(VERSION)/' -e "s/@DATE@/$$(date -u -d @$(SOURCE_DATE_EPOCH) +%F)/" \
		packaging/siteserver.1.in | gzip -9n >$(PACKAGE_DIR)/siteserver.1.gz
	for sh in bash zsh fish; do bin/siteserver completion $$sh >$(PACKAGE_DIR)/completion.$$sh || exit 1; done
	for p in deb rpm; do \
		PKG_VERSION=$(PKG_VERSION) GOARCH=$$($(GO) env GOARCH) SOURCE_DATE_EPOCH=$(SOURCE_DATE_EPOCH) \
			PACKAGE_DIR=$(PACKAGE_DIR) bin/nfpm package -f packaging/nfpm.yaml -p $$p -t $(PACKAGE_DIR)/ || exit 1; \
	done

vet:
	$(GO) vet ./...
	@test -z "$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go'))" || { gofmt -l .; echo "gofmt needed"; exit 1; }

# go test -race needs cgo.
test: vet
	CGO_ENABLED=1 $(GO) test -race -count=1 -timeout 15m ./...

# The chaos test at length: jobs on several agents while kill -9 takes down the NS, the task
# server and agents at random (`make test` runs 3 rounds). CHAOS_SEED repeats a logged run.
CHAOS_ROUNDS ?= 40
CHAOS_SEED ?= 0
chaos:
	CGO_ENABLED=1 $(GO) test -race -count=1 -timeout 30m -run '^TestChaos$$' -v ./cmd/siteserver/ -args -chaos.rounds=$(CHAOS_ROUNDS) -chaos.seed=$(CHAOS_SEED)

# Short runs of every fuzz target (FUZZTIME each), for local use; targets are found by name.
FUZZTIME ?= 30s
fuzz:
	@for pkg in $$($(GO) list ./...); do \
		for f in $$($(GO) test -list '^Fuzz' $$pkg | grep '^Fuzz'); do \
			echo "== $$pkg $$f"; \
			$(GO) test -run='^$$' -fuzz="^$$f$$" -fuzztime=$(FUZZTIME) $$pkg || exit 1; \
		done; \
	done

bench:
	$(GO) run ./bench sites
	$(GO) run ./bench tickle -agents 15000
	$(GO) run ./bench selection -baseline auto
	$(GO) run ./bench pkg-serve
	$(GO) run ./bench pkg-coalesce
	$(GO) run ./bench pkg-resume
	$(GO) run ./bench tftp
	$(GO) run ./bench pxe
	$(GO) run ./bench abuse
	$(GO) run ./bench abuse-netboot

deps:
	./scripts/install-deps.sh

clean:
	rm -rf bin data
