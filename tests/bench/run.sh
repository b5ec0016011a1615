#!/usr/bin/env bash
# `make bench`: runs every tests/bench/*.bench.sh against the static binary
# and prints one table. Each part prints rows to stdout as
#   ROW<TAB>area<TAB>metric<TAB>value<TAB>goal<TAB>comparison
# and anything else to stderr. Results also land in bench-out/results.tsv.
set -euo pipefail
cd "$(dirname "$0")/../.."
export VENDETTA_BIN=$(realpath "${1:-target/x86_64-unknown-linux-musl/release/vendetta}")
export BENCH_OUT=$PWD/bench-out
mkdir -p "$BENCH_OUT"
rows="$BENCH_OUT/results.tsv"
: >"$rows"
for part in tests/bench/*.bench.sh; do
    [ -n "${BENCH_ONLY:-}" ] && [[ "$part" != *"$BENCH_ONLY"* ]] && continue
    echo "== $part" >&2
    if ! bash "$part" | grep $'^ROW\t' | cut -f2- >>"$rows"; then
        echo "bench part $part failed; its rows may be missing" >&2
    fi
done
echo
echo "vendetta benchmarks, $(date -u +%Y-%m-%d), $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -r)"
python3 - "$rows" <<'PY'
import sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
head = ["area", "metric", "value", "goal", "comparison"]
rows = [r + [""] * (5 - len(r)) for r in rows]
w = [max(len(x[i]) for x in [head] + rows) for i in range(5)]
line = lambda r: "| " + " | ".join(c.ljust(w[i]) for i, c in enumerate(r)) + " |"
print(line(head))
print("|" + "|".join("-" * (n + 2) for n in w) + "|")
for r in rows:
    print(line(r))
PY
