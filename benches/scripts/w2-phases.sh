#!/bin/bash
# W2 outside the bench, for profiling and A/B runs of two builds: a master hosting its bus
# and a slave run from the binary in $B; a tree of 10,000 files of 4 KiB in 100 dirs is
# copied with `cp -a` (the baseline), then moved into the master; completion and phases are
# read from the bus's events.jsonl. Prints: cp -a time, total time, first/last notify and
# consume, a histogram per 100 ms (notifies/consumes), and each process's CPU seconds.
#
#   B=target/release/filesync benches/scripts/w2-phases.sh
#   PERFSLAVE=1 (or PERFMASTER=1) ... records `perf` of that process into $OUT/<side>.data
#
# Nothing is deleted (see docs/BENCHMARKS.md: freed inodes slow the next run on ext4
# without a journal); every run's directory stays under $OUT.
set -euo pipefail
B=${B:-target/release/filesync}
OUT=${OUT:-${TMPDIR:-/tmp}/filesync-w2}
mkdir -p "$OUT"
R=$(mktemp -d "$OUT/run.XXXX")
mkdir -p "$R/m" "$R/s" "$R/stage"
"$B" master --dir "$R/m" --listen 127.0.0.1:0 --state "$R/mstate" 2>"$R/master.log" &
MP=$!
for _ in $(seq 50); do grep -q "listening on" "$R/master.log" && break; sleep 0.1; done
ADDR=$(grep -o "listening on [0-9.:]*" "$R/master.log" | awk '{print $3}')
"$B" slave --dir "$R/s" --bus "$ADDR" --state "$R/sstate" 2>"$R/slave.log" &
SP=$!
# Timing starts once the slave has said it is ready (its `ready` event in the bus's log).
for _ in $(seq 100); do
  grep -q '"agent":"slave","tag":"ready"' "$R/mstate/events.jsonl" 2>/dev/null && break
  sleep 0.1
done
PP=""
if [ -n "${PERFMASTER:-}" ]; then perf record -p $MP --call-graph dwarf,16384 -F 997 -o "$OUT/master.data" 2>/dev/null & PP=$!; fi
if [ -n "${PERFSLAVE:-}" ]; then perf record -p $SP --call-graph dwarf,16384 -F 997 -o "$OUT/slave.data" 2>/dev/null & PP=$!; fi
SCRIPTS=$(dirname "$0") python3 - "$R" <<'PY'
import os, subprocess, sys, time
R = sys.argv[1]
for d in range(100):
    os.makedirs(f"{R}/stage/w2/d{d:03}")
    for f in range(100):
        name = f"d{d:03}/f{f:04}\n".encode()
        with open(f"{R}/stage/w2/d{d:03}/f{f:04}", "wb") as fh:
            fh.write(name + b"x" * (4096 - len(name)))
os.sync()
t = time.time()
subprocess.run(["cp", "-a", R + "/stage/w2", R + "/cpw2"], check=True)
print("cp -a %.3f" % (time.time() - t))
os.sync()
t0 = time.time()
os.rename(R + "/stage/w2", R + "/m/w2")
def consumed():
    with open(R + "/mstate/events.jsonl") as log:
        return sum(1 for l in log if '"consume"' in l and '"put"' in l and '"file"' in l)
while consumed() < 10000:
    time.sleep(0.05)
print("total %.3f s" % (time.time() - t0))
sys.path.insert(0, os.environ["SCRIPTS"])
import phases
phases.report(R + "/mstate/events.jsonl", t0)
PY
if [ -n "$PP" ]; then kill -INT $PP; sleep 2; fi
echo "cpu s: slave $(awk '{print ($14+$15)/100}' /proc/$SP/stat) master $(awk '{print ($14+$15)/100}' /proc/$MP/stat)"
kill $MP $SP
wait 2>/dev/null || true
