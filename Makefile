# The project's entry points. `make e2e` and `make test` take a fresh machine to a green run:
# each installs what it needs (scripts/install-deps.sh) before it builds and tests.
SHELL := /bin/bash
# Go lives in /usr/local/go on a fresh machine, often outside a CI job's PATH.
export PATH := $(PATH):/usr/local/go/bin
GO ?= go

# The agent under test (`make e2e AGENT=/usr/sbin/qemu-ga`), the image profile, a Ginkgo label
# filter and the number of Ginkgo processes.
AGENT ?= bin/qga
IMAGE ?= tiny
LABELS ?=
PROCS ?= 1
ARTIFACTS ?= _artifacts
VERSION ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)

# Absolute, because Ginkgo runs the suite from inside specs/.
abs = $(if $(filter /%,$(1)),$(1),$(CURDIR)/$(1))

GINKGO := $(GO) tool ginkgo
# Everything that runs without a VM.
HOST_PKGS = $(shell $(GO) list ./... | grep -v '/specs')

.PHONY: agent test lint deps e2e clean

agent:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '-s -w -X main.version=$(VERSION)' -o bin/qga ./agent/cmd/qga

deps:
	scripts/install-deps.sh all

test: agent
	scripts/install-deps.sh test
	QGA_BIN=$(CURDIR)/bin/qga $(GO) test -count=1 $(HOST_PKGS)

lint:
	@unformatted=$$(gofmt -l $$(git ls-files '*.go')); \
	  if [ -n "$$unformatted" ]; then echo "gofmt would change:"; echo "$$unformatted"; exit 1; fi
	$(GO) vet ./...

e2e: agent
	scripts/install-deps.sh e2e
	@mkdir -p $(ARTIFACTS)
	AGENT=$(call abs,$(AGENT)) IMAGE=$(IMAGE) ARTIFACTS=$(call abs,$(ARTIFACTS)) \
	  $(GINKGO) -v --procs=$(PROCS) --label-filter='$(LABELS)' \
	  --junit-report=junit.xml --output-dir=$(call abs,$(ARTIFACTS)) ./specs

clean:
	rm -rf bin $(ARTIFACTS)
