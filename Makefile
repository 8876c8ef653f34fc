# The project's entry points. `make e2e` and `make test` take a fresh machine to a green run:
# each installs what it needs (scripts/install-deps.sh) before it builds and tests.
SHELL := /bin/bash
# Go lives in /usr/local/go on a fresh machine, often outside a CI job's PATH.
export PATH := $(PATH):/usr/local/go/bin
GO ?= go

# The agent under test (`make e2e AGENT=/usr/sbin/qemu-ga`; AGENT=image runs a cloud image's own
# qemu-ga and is passed on as the word, not a path), the image profile, a Ginkgo label filter and
# the number of Ginkgo processes. PROCS defaults to what fits the machine: a guest keeps two
# vCPU threads busy under TCG, so one process per two cores, and at most one per 1.5 GiB of
# available memory (a guest and its QEMU); one on a 2-core machine.
AGENT ?= bin/qga
IMAGE ?= tiny
LABELS ?=
PROCS ?= $(shell n=$$(( $$(nproc) / 2 )); \
  m=$$(( $$(awk '/^MemAvailable:/ {print $$2}' /proc/meminfo) / 1572864 )); \
  [ "$$m" -lt "$$n" ] && n=$$m; [ "$$n" -lt 1 ] && n=1; echo $$n)
ARTIFACTS ?= _artifacts
# Our version always names the project, so reports and specs can tell it from a qemu-ga.
VERSION ?= qgakit-$(shell git describe --always --dirty 2>/dev/null || echo dev)

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

# Linters run from their modules at a pinned version, so go.mod stays free of tool dependencies
# and every machine runs the same ones. The first run builds them (minutes); later runs come from
# the build cache.
GOLANGCI_LINT ?= $(GO) run github.com/golangci/golangci-lint/v2/cmd/golangci-lint@v2.15.0
ACTIONLINT ?= $(GO) run github.com/rhysd/actionlint/cmd/actionlint@v1.7.12

# Every checker runs even when an earlier one fails, so one run lists everything to fix.
# shellcheck comes first: actionlint checks the workflows' run: scripts only when it is there.
lint:
	scripts/install-deps.sh lint
	@status=0; \
	echo "lint: gofmt"; \
	gofiles=$$(git ls-files --cached --others --exclude-standard '*.go') || { echo "lint: git ls-files failed"; status=1; }; \
	unformatted=$$(if [ -n "$$gofiles" ]; then gofmt -l $$gofiles; fi); \
	if [ -n "$$unformatted" ]; then echo "gofmt would change:"; echo "$$unformatted"; status=1; fi; \
	echo "lint: go vet"; $(GO) vet ./... || status=1; \
	echo "lint: golangci-lint (.golangci.yml)"; $(GOLANGCI_LINT) run ./... || status=1; \
	echo "lint: actionlint (.github/workflows)"; $(ACTIONLINT) || status=1; \
	exit $$status

e2e: agent
	scripts/install-deps.sh $(if $(filter tiny,$(IMAGE)),e2e,cloud)
	@mkdir -p $(ARTIFACTS)
	AGENT=$(if $(filter image,$(AGENT)),image,$(call abs,$(AGENT))) IMAGE=$(IMAGE) ARTIFACTS=$(call abs,$(ARTIFACTS)) \
	  $(GINKGO) -v --procs=$(PROCS) --label-filter='$(LABELS)' \
	  --junit-report=junit.xml --json-report=report.json --output-dir=$(call abs,$(ARTIFACTS)) ./specs

clean:
	rm -rf bin $(ARTIFACTS)

.PHONY: fuzz release

# `make fuzz FUZZTIME=10m` fuzzes every Fuzz target of the host packages for FUZZTIME each, one
# target at a time because `go test -fuzz` takes one. A crasher is written to the package's
# testdata/fuzz/, from where `make test` replays it as a regression case. All targets run even
# when one fails; a tree without any Fuzz target fails, so CI never passes on no fuzzing.
FUZZTIME ?= 1m

# Listing runs each package's test binary, and some TestMains want bin/qga, as in `make test`.
fuzz: agent
	@set -o pipefail; export QGA_BIN=$(CURDIR)/bin/qga; \
	targets=$$($(GO) test -list '^Fuzz' $(HOST_PKGS) | \
	  awk '/^Fuzz/ { names = names " " $$1; next } \
	       /^ok / { n = split(names, a, " "); for (i = 1; i <= n; i++) print $$2 "=" a[i]; names = "" }') \
	  || { echo "fuzz: listing the Fuzz targets failed" >&2; exit 1; }; \
	if [ -z "$$targets" ]; then echo "fuzz: no Fuzz targets found" >&2; exit 1; fi; \
	status=0; \
	for t in $$targets; do \
	  pkg=$${t%=*}; name=$${t#*=}; \
	  echo "fuzz: $$name in $$pkg for $(FUZZTIME)"; \
	  $(GO) test -run '^$$' -fuzz "^$$name\$$" -fuzztime $(FUZZTIME) $$pkg || status=1; \
	done; \
	exit $$status

# `make release VERSION=v1.2.3` cross-builds the static agent for each of RELEASE_ARCHS into
# bin/release/qga-linux-<arch>, with the same flags as `make agent`, plus SHA256SUMS.
RELEASE_ARCHS ?= amd64 arm64

release:
	rm -rf bin/release
	mkdir -p bin/release
	set -e; for arch in $(RELEASE_ARCHS); do \
	  CGO_ENABLED=0 GOOS=linux GOARCH=$$arch $(GO) build -trimpath -ldflags '-s -w -X main.version=$(VERSION)' \
	    -o bin/release/qga-linux-$$arch ./agent/cmd/qga; \
	done
	cd bin/release && sha256sum qga-linux-* > SHA256SUMS

.PHONY: conformance report diff diff-host

# `make conformance AGENTS="bin/qga /usr/sbin/qemu-ga"` runs the VM suite once per agent, each
# with its own reports and artifacts in $(ARTIFACTS)/<agent path, / turned into ->
# (bin/qga -> bin-qga), then writes $(ARTIFACTS)/conformance.md and conformance.html: a
# command x agent matrix (harness/report). Each run tests a copy of the agent taken at its
# start (<dir>/agent), so a rebuild of bin/qga during the long run cannot change what the specs
# compare the guest's binary with. Every agent runs even when one fails; the target fails when
# any agent failed a spec it must pass. LABELS and PROCS apply to every run.
AGENTS ?= bin/qga /usr/sbin/qemu-ga

conformance: agent
	@pairs=""; \
	for a in $(AGENTS); do \
	  s=$${a#./}; s=$${s#/}; s=$${s//\//-}; \
	  echo "conformance: make e2e AGENT=$$a ARTIFACTS=$(ARTIFACTS)/$$s"; \
	  rm -rf "$(ARTIFACTS)/$$s"; mkdir -p "$(ARTIFACTS)/$$s"; \
	  cp "$$a" "$(ARTIFACTS)/$$s/agent" || exit 1; \
	  $(MAKE) --no-print-directory e2e AGENT="$(ARTIFACTS)/$$s/agent" ARTIFACTS="$(ARTIFACTS)/$$s" \
	    || echo "conformance: the suite failed for $$a (the report says why)"; \
	  pairs="$$pairs $$a=$(ARTIFACTS)/$$s"; \
	done; \
	$(GO) run ./harness/cmd/conformance -out $(ARTIFACTS) $$pairs

# `make report` writes the same report for the last `make e2e` run alone, from its
# $(ARTIFACTS)/report.json and for its AGENT, without running anything again: what a CI job that
# ran `make e2e` publishes (it fails, as conformance does, when AGENT failed a spec it must pass).
report:
	$(GO) run ./harness/cmd/conformance -out $(ARTIFACTS) $(AGENT)=$(ARTIFACTS)

# `make diff A=bin/qga B=/usr/sbin/qemu-ga` boots one tiny VM with both agents, each on its own
# port, sends them the request corpus (corpus/requests/*.json) and writes $(ARTIFACTS)/diff.md
# and diff.json (harness/diff). It fails on class or value differences that
# corpus/documented.json does not accept; desc (error text) differences are reported only.
# `make diff-host` does the same on this machine over unix-listen, in seconds, with the
# entries that are safe on a host.
A ?= bin/qga
B ?= /usr/sbin/qemu-ga

diff: agent
	scripts/install-deps.sh e2e
	$(GO) run ./harness/cmd/qgadiff -mode vm -a $(A) -b $(B) -out $(ARTIFACTS)

diff-host: agent
	scripts/install-deps.sh test
	$(GO) run ./harness/cmd/qgadiff -mode host -a $(A) -b $(B) -out $(ARTIFACTS)

.PHONY: bench

# `make bench` writes $(ARTIFACTS)/bench.json and prints a table (harness/bench): QEMU start to
# the agent answering by cold boot and by snapshot restore (median of 5), the suite's wall time
# (`make e2e` with the defaults), and bin/qga against the reference qemu-ga in restored VMs of
# the same shape and on the host: guest-ping round trips, 64 MiB guest-file-read throughput,
# RSS, exec to first answered sync. The same VM numbers are taken again in the debian-cloud
# guest (bench.json's debian_cloud: cold boot median of 3, restores of 5, the image's own
# qemu-ga as the reference) when its image is in the cache; bench never builds it (make e2e
# IMAGE=debian-cloud does), and BENCH_FLAGS=-cloud=off|on skips it or fails without it.
# It reports and asserts nothing about time; it fails only when a measurement could not be
# taken. BENCH_SUITE=0 skips the suite (the longest part); BENCH_FLAGS passes more flags
# (go run ./harness/bench/cmd/qgabench -h lists them).
BENCH_SUITE ?= 1
BENCH_REFERENCE ?= /usr/sbin/qemu-ga
BENCH_FLAGS ?=

bench: agent
	scripts/install-deps.sh e2e
	@mkdir -p $(ARTIFACTS)
	$(GO) run ./harness/bench/cmd/qgabench -ours bin/qga -reference $(BENCH_REFERENCE) \
	  -out $(ARTIFACTS)/bench.json -suite=$(if $(filter 0 false no,$(BENCH_SUITE)),false,true) $(BENCH_FLAGS)
