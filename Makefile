# The front door. Every target installs what it needs first (scripts/install-deps is a no-op
# when everything is present) and builds with at most two jobs.
.PHONY: all deps build test test-asan test-tsan fuzz bench compare conformance demo example format clean

JOBS ?= 2

all: build

deps:
	@scripts/install-deps

build: deps
	@cmake --preset release >/dev/null
	@cmake --build --preset release -j $(JOBS)

test: build
	@ctest --preset release -j $(JOBS)

test-asan: deps
	@cmake --preset asan >/dev/null
	@cmake --build --preset asan -j $(JOBS)
	@ctest --preset asan -j $(JOBS)

test-tsan: deps
	@cmake --preset tsan >/dev/null
	@cmake --build --preset tsan -j $(JOBS)
	@ctest --preset tsan -j $(JOBS)

# libFuzzer targets (fuzz/), built with clang-14 in build-fuzz/: each replays its saved crashes,
# then fuzzes for FUZZ_SECONDS (default 60) from its committed corpus, or for FUZZ_RUNS inputs
# from a fixed seed (reproducible; what CI does). Fails on any crash.
FUZZ_SECONDS ?= 60
FUZZ_RUNS ?=
fuzz: deps
	@scripts/install-deps fuzz
	@cmake --preset fuzz >/dev/null
	@cmake --build --preset fuzz -j $(JOBS)
	@FUZZ_SECONDS=$(FUZZ_SECONDS) FUZZ_RUNS=$(FUZZ_RUNS) fuzz/run

bench: build
	@scripts/install-deps bench
	@bench/run

# unherd, nginx and Varnish side by side (bench/compare/): installs nginx, Varnish and wrk if
# missing, prints a table and appends it to bench/RESULTS.md.
compare: build
	@scripts/install-deps compare
	@bench/compare/compare.py

# unherd, nginx, Varnish and Squid against the HTTP caching test suite of cache-tests.fyi (the npm
# package http-cache-tests, installed into build/conformance/): prints a table, appends it to
# bench/RESULTS.md, keeps raw results and a list of unherd's failures in build/conformance/.
# Needs Node.js and npm. `bench/conformance/run --only unherd --binary PATH` reruns unherd alone.
conformance: build
	@scripts/install-deps conformance
	@bench/conformance/run

# The gateway on 127.0.0.1:8080 (admin 9901) in front of a simulated slow, flaky upstream, a herd
# of clients and a table of what happened; then it keeps serving until Ctrl-C.
demo: build
	@build/unherd demo

# The library as a program outside this repository uses it: unherd built alone and installed
# under build/example/, then examples/ built against the installed package and run (examples/run).
example: deps
	@JOBS=$(JOBS) examples/run

format:
	@clang-format -i $$(git ls-files '*.h' '*.cc')

clean:
	@rm -rf build build-debug build-asan build-tsan build-fuzz
