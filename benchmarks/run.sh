#!/usr/bin/env bash
# run.sh — build everything, bring the lab up, run every benchmark scenario
# against every peer, tear the lab down, and write benchmarks/RESULTS.md.
#
#   sudo benchmarks/run.sh            # everything, about 35-40 minutes
#   sudo QUICK=1 benchmarks/run.sh    # a subset, about 8 minutes
#
# Environment: RUNS (runs per figure and per search step, default 3; QUICK
# 1), DURATION (per run, default 2s; QUICK 1s), RATE (the fixed rates,
# datagrams/s, comma-separated, default 20000: a rate every peer holds),
# SEARCH_STEPS (halvings of the throughput search, default 5; QUICK 3),
# FT_COUNT (flow-table benchmark -count, default 3; QUICK 1), FT_SHORT=1 (skip
# the flowtable package's own 10M-entry benchmarks; the default, and QUICK;
# the flow table against Go's maps always includes 10M), ONLY (a
# comma-separated subset of sink,echo,proxy,listener,tunnel,gro,flowtable;
# default all), OUT (the directory for RESULTS.md, results.json and
# flowtable-bench.txt; default this one, but a temporary one with ONLY, so
# that a partial session never replaces the committed results).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
main=$(cd "$here/.." && pwd)
# UDPMUX_SRC builds the daemon from another checkout, such as an older
# commit to compare with (git worktree add /tmp/before <commit>); the
# report names its commit.
src=$(cd "${UDPMUX_SRC:-$main}" && pwd)
[[ $EUID -eq 0 ]] || { echo "run.sh: needs root (network namespaces)" >&2; exit 1; }

# The settings given, for RESULTS.md's statement of the command.
given=""
for v in QUICK ONLY RUNS DURATION RATE SEARCH_STEPS FT_COUNT FT_SHORT OUT UDPMUX_SRC UDPMUX_ENV; do
	[[ -n ${!v:-} ]] && printf -v quoted '%q' "${!v}" && given+="$v=$quoted "
done
QUICK=${QUICK:-0}
if [[ $QUICK == 1 ]]; then
	RUNS=${RUNS:-1} DURATION=${DURATION:-1s} FT_COUNT=${FT_COUNT:-1} SEARCH_STEPS=${SEARCH_STEPS:-3}
else
	RUNS=${RUNS:-3} DURATION=${DURATION:-2s} FT_COUNT=${FT_COUNT:-3} SEARCH_STEPS=${SEARCH_STEPS:-5}
fi
FT_SHORT=${FT_SHORT:-1}
RATE=${RATE:-20000}
ONLY=${ONLY:-}
if [[ -n $ONLY ]]; then
	OUT=${OUT:-$(mktemp -d /tmp/udpmux-bench-results.XXXXXX)}
else
	OUT=${OUT:-$here}
fi
mkdir -p "$OUT"

out=$(mktemp -d /tmp/udpmux-bench-bin.XXXXXX)
# The per-CPU input backlog that RPS fills (net.core.netdev_max_backlog, a
# global setting) defaults to 1000 packets: shorter than a NIC's receive
# ring, so bursts from the generator would be dropped before any server sees
# them. Raise it for the run and restore it afterwards.
backlog_was=$(sysctl -n net.core.netdev_max_backlog)
cleanup() {
	"$here/lab.sh" down || true
	sysctl -qw net.core.netdev_max_backlog="$backlog_was" || true
	rm -rf "$out"
}
trap cleanup EXIT
sysctl -qw net.core.netdev_max_backlog=10000
# Keep idle CPUs out of halt while measuring (what tuned's latency-performance
# profile does): on a virtual machine every halt and wake-up is a trip to the
# hypervisor, which otherwise dominates the cost of a lightly loaded server.
# The request holds while descriptor 3 is open, i.e. until this script exits.
if [[ -w /dev/cpu_dma_latency ]]; then
	exec 3>/dev/cpu_dma_latency
	printf '\0\0\0\0' >&3
fi

# Tools: nginx with the stream module (the proxy peer), nftables and
# conntrack (the kernel NAT peer), ethtool (GRO on the veths) and benchstat.
missing=()
[[ -e /usr/lib/nginx/modules/ngx_stream_module.so ]] || missing+=(nginx libnginx-mod-stream)
command -v nft >/dev/null || missing+=(nftables)
command -v conntrack >/dev/null || missing+=(conntrack)
command -v ethtool >/dev/null || missing+=(ethtool)
if ((${#missing[@]})); then
	echo "run.sh: installing ${missing[*]}" >&2
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
gobin=$(go env GOPATH)/bin
export PATH=$PATH:$gobin
if ! command -v benchstat >/dev/null; then
	echo "run.sh: installing benchstat" >&2
	GOFLAGS= go install golang.org/x/perf/cmd/benchstat@v0.0.0-20260908200009-22c9c6c9d4da
fi

echo "run.sh: building into $out" >&2
(cd "$here" && go build -o "$out/" ./cmd/loadgen ./cmd/peer ./cmd/spinner ./cmd/bench)
if (cd "$src" && go build -o "$out/udpmux" ./cmd/udpmux) 2>"$out/udpmux-build.log"; then
	echo "run.sh: built the udpmux daemon" >&2
else
	echo "run.sh: udpmux daemon did not build; its rows will say so:" >&2
	tail -5 "$out/udpmux-build.log" >&2
	rm -f "$out/udpmux"
fi

"$here/lab.sh" up
opts=()
[[ $QUICK == 1 ]] && opts=(-quick)
[[ $FT_SHORT == 1 ]] && opts+=(-flowtable-short)
[[ -n $ONLY ]] && opts+=(-only "$ONLY")
[[ -n ${UDPMUX_ENV:-} ]] && opts+=(-udpmux-env "$UDPMUX_ENV")
cd "$here"
"$out/bench" -bin "$out" -main "$src" -out "$OUT/RESULTS.md" -raw "$OUT/results.json" \
	-flowtable-out "$OUT/flowtable-bench.txt" -runs "$RUNS" -duration "$DURATION" -rates "$RATE" \
	-search-steps "$SEARCH_STEPS" -flowtable-count "$FT_COUNT" -command "sudo ${given}benchmarks/run.sh" "${opts[@]}"
