#!/bin/bash
# N2 (W2 over NATS) outside the bench, for profiling: a nats-server configured as the test
# kit's (every write synced), a master and a slave on it from the binary in $B; a tree of
# 10,000 files of 4 KiB in 100 dirs is moved into the master. Prints the time until the
# slave holds all 10,000 files, when the notifies and consumes were appended (from
# `filesync export`), a histogram per 100 ms, and each process's CPU seconds (nats-server's
# included).
#
#   B=target/release/filesync benches/scripts/n2-phases.sh
#   PERFMASTER=1 (or PERFSLAVE=1, PERFNATS=1) ... records `perf` of that process into
#   $OUT/<side>.data (nats-server's with frame pointers, which Go keeps)
#
# Nothing is deleted; every run's directory stays under $OUT.
set -euo pipefail
B=${B:-target/release/filesync}
OUT=${OUT:-${TMPDIR:-/tmp}/filesync-n2}
. "$(dirname "$0")/nats-hosted.sh"
python3 "$(dirname "$0")/phases.py" --tree "$R/stage/w2"
PP=""
if [ -n "${PERFMASTER:-}" ]; then perf record -p $MP --call-graph dwarf,16384 -F 997 -o "$OUT/master.data" 2>/dev/null & PP=$!; fi
if [ -n "${PERFSLAVE:-}" ]; then perf record -p $SP --call-graph dwarf,16384 -F 997 -o "$OUT/slave.data" 2>/dev/null & PP=$!; fi
if [ -n "${PERFNATS:-}" ]; then perf record -p $NP -g -F 997 -o "$OUT/nats.data" 2>/dev/null & PP=$!; fi
T0=$(date +%s.%N)
mv "$R/stage/w2" "$R/m/w2"
while [ "$(find "$R/s/w2" -type f 2>/dev/null | wc -l)" -lt 10000 ]; do sleep 0.05; done
echo "total $(echo "$(date +%s.%N) - $T0" | bc) s"
"$B" export --bus "$BUS" > "$R/events.jsonl"
python3 "$(dirname "$0")/phases.py" "$R/events.jsonl" "$T0"
if [ -n "$PP" ]; then kill -INT $PP; sleep 2; fi
cpu() { awk '{print ($14+$15)/100}' /proc/$1/stat; }
echo "cpu s: master $(cpu $MP) slave $(cpu $SP) nats-server $(cpu $NP)"
kill $MP $SP; sleep 0.5; kill $NP
wait 2>/dev/null || true
