# Two commands on a fresh machine: `make run` and `make test` (see README.md).
# Both install what is missing (Debian packages via apt-get, Python packages via pip),
# skip what is already there, then build. Run as root, as CI does.

SHELL := /bin/bash
SWIFT ?= swift
PYTHON ?= python3

# Debian packages the build needs: libcrypto (SHA-256, JWT signing), libcurl and nghttp2 (outbound pool),
# libyaml (the proxy's config).
APT_BUILD := libssl-dev pkg-config libcurl4-openssl-dev libnghttp2-dev libyaml-dev
# What the tests run against: real clients and servers nobody here wrote.
# What `make images` builds with: buildah (no Docker daemon), patchelf and strip (rootfs.sh).
APT_IMAGES := buildah patchelf binutils ca-certificates
# busybox-static: the shell of the stand-in runner image the image test builds the worker on.
APT_TEST := curl openssl iproute2 nghttp2-server nghttp2-proxy prometheus kubectl $(APT_IMAGES) busybox-static
PIP_TEST := pytest requests jsonschema PyYAML kubernetes-validate kubernetes cryptography

.PHONY: all build build-deps release run test test-deps unit integration images images-deps clean bench bench-idle bench-agc bench-agc-recovery bench-agc-classic bench-gmc bench-webhook bench-jobs demo fuzz

all: build

# Installs the Debian packages in $(1) that are not installed yet. policy-rc.d keeps
# package scripts from starting daemons (the prometheus package would bind :9090).
define apt_install
	@missing=""; for p in $(1); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "make: installing Debian packages:$$missing"; \
		created=""; if [ ! -e /usr/sbin/policy-rc.d ]; then printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; created=1; fi; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; rc=$$?; \
		if [ -n "$$created" ]; then rm -f /usr/sbin/policy-rc.d; fi; exit $$rc; \
	fi
endef

build-deps:
	$(call apt_install,$(APT_BUILD))

build: build-deps
	$(SWIFT) build

release: build-deps
	$(SWIFT) build -c release

# Starts the egress proxy on its embedded default config (127.0.0.1:3128, admin :9090).
run: release
	.build/release/egress-proxy

test-deps: build-deps
	$(call apt_install,$(APT_TEST))
	@$(PYTHON) -c 'import pytest, requests, jsonschema, yaml, kubernetes_validate, kubernetes, cryptography' 2>/dev/null || $(PYTHON) -m pip install -q $(PIP_TEST)

test: test-deps
	$(SWIFT) build --build-tests
	$(SWIFT) test --skip-build
	EGRESS_PROXY_BIN=$(CURDIR)/.build/debug/egress-proxy $(PYTHON) -m pytest -q Tests/integration

unit:
	$(SWIFT) test

images-deps: build-deps
	$(call apt_install,$(APT_IMAGES))

# Every image deploy/ names, with buildah into its default storage (deploy/images/build.sh;
# the Dockerfiles build the same with a Docker engine). Binaries with a static Swift standard
# library, in their own build directory so the dynamic release build is not rebuilt each time.
# WORKER_BASE=... for the worker's runner base image (default: the official one, pulled).
images: images-deps
	$(SWIFT) build -c release --static-swift-stdlib --scratch-path .build/static
	bash deploy/images/build.sh $(IMAGES)

integration: test-deps
	$(SWIFT) build
	EGRESS_PROXY_BIN=$(CURDIR)/.build/debug/egress-proxy $(PYTHON) -m pytest -q Tests/integration

# connect-flood against egress-proxy, squid, tinyproxy and direct, in one run (docs/benchmarks.md).
# BENCH_ARGS=--long adds 8,000 tunnels held 60 s and the 1,000,000-tunnel leak check.
bench: release
	bash bench/peers/install.sh
	$(PYTHON) bench/run_bench.py $(BENCH_ARGS)

# Memory of idle tunnels (RSS above baseline, per tunnel), on a release build.
bench-idle: release
	$(PYTHON) bench/idle_memory.py --bin .build/release/egress-proxy --tunnels 1000

# The AGC under a burst of jobs (assigned -> pod latency, GitHub requests per job, RSS), against
# the fakes, on a release build (docs/benchmarks.md). BENCH_AGC_ARGS="--jobs 500 --json".
bench-agc: release test-deps
	$(PYTHON) bench/agc_burst.py $(BENCH_AGC_ARGS)

# The AGC re-running evicted jobs: eviction -> first re-run call -> the new job's pod (docs/benchmarks.md).
bench-agc-recovery: release test-deps
	$(PYTHON) bench/agc_recovery.py $(BENCH_AGC_RECOVERY_ARGS)

# Idle classic virtual sessions: AGC RSS at 1, 100 and 1,000, polls and CPU per hour (docs/benchmarks.md).
bench-agc-classic: release test-deps
	$(PYTHON) bench/agc_classic_idle.py $(BENCH_AGC_CLASSIC_ARGS)

# Jobs through a whole gateway (fake GitHub behind TLS/HTTP/2, the egress proxy, an AGC, a kubelet
# simulator with 5 % evictions): jobs/h, latency, requests per job, lost/duplicated (docs/benchmarks.md).
bench-jobs: release test-deps
	$(PYTHON) bench/job_storm.py $(BENCH_JOBS_ARGS)

# The whole gateway on one machine with a live view: fakes, proxy, GMC, AGC, jobs every few seconds.
demo: release test-deps
	$(PYTHON) bench/demo.py $(DEMO_ARGS)

# The GMC with 200 gateways created at once: convergence time, API requests, RSS (docs/benchmarks.md).
# BENCH_GMC_ARGS="--gateways 500 --json" or "--bin OTHER_GMC" to measure another build the same way.
bench-gmc: release test-deps
	$(PYTHON) bench/gmc_scale.py $(BENCH_GMC_ARGS)

# Webhook deliveries per second through `gmc run --webhook-addr` (bench/webhook_bench.py),
# routing only, then with a signed wake per routed job.
bench-webhook: release test-deps
	$(PYTHON) bench/webhook_bench.py
	$(PYTHON) bench/webhook_bench.py --wake

# libFuzzer on the request parser, outside CI (FUZZ_SECONDS, default 600).
FUZZ_SECONDS ?= 600
FUZZER_RT := $(shell ls -d /opt/swift/usr/lib/clang/*/lib/linux 2>/dev/null | head -1)/libclang_rt.fuzzer_no_main-x86_64.a
fuzz:
	$(SWIFT) build --package-path fuzz -c release -Xswiftc -sanitize=address \
		-Xswiftc -sanitize-coverage=edge,inline-8bit-counters,pc-table,trace-cmp -Xswiftc -parse-as-library \
		-Xlinker $(FUZZER_RT) -Xlinker -lstdc++
	mkdir -p .build-fuzz-corpus && cp -n fuzz/corpus/* .build-fuzz-corpus/
	fuzz/.build/release/ParserFuzz -max_total_time=$(FUZZ_SECONDS) -print_final_stats=1 .build-fuzz-corpus

clean:
	rm -rf .build
