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
. "$(dirname "$0")/hosted.sh"
perf_start 997
SCRIPTS=$(dirname "$0") python3 - "$R" <<'PY'
import os, subprocess, sys, time
R = sys.argv[1]
sys.path.insert(0, os.environ["SCRIPTS"])
import phases
phases.make_tree(R + "/stage/w2")
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
phases.report(R + "/mstate/events.jsonl", t0)
PY
perf_stop
echo "cpu s: slave $(awk '{print ($14+$15)/100}' /proc/$SP/stat) master $(awk '{print ($14+$15)/100}' /proc/$MP/stat)"
kill $MP $SP
wait 2>/dev/null || true
