#!/bin/bash
# W7 outside the bench, for profiling and A/B runs of two builds: a master hosting its bus
# and a slave run from the binary in $B; a 1 GiB file of random bytes is mirrored, then an
# edited copy (1 MiB overwritten at its middle, written beside it as an editor saves) is
# copied onto a copy of the old version with `rsync --no-whole-file` (the baseline) and
# moved into the master. Prints: the rsync time, the time until the slave's consume of the
# edit is in the bus's events.jsonl, when the notify came, and the CPU seconds of each
# thread of the master (with its bus) and of the slave, counted from the edit's move.
#
#   B=target/release/filesync benches/scripts/w7-phases.sh
#   PERFSLAVE=1 (or PERFMASTER=1) ... records `perf` of that process into $OUT/<side>.data
#   WARM=2 ... writes and deletes 2 GiB before each timed tool (hosted.sh's level_ground)
#
# The run's large files are truncated at the end (its logs stay): a few large files can go
# without the slow-create spell that deleting many leaves (docs/BENCHMARKS.md).
set -euo pipefail
B=${B:-target/release/filesync}
OUT=${OUT:-${TMPDIR:-/tmp}/filesync-w7}
. "$(dirname "$0")/hosted.sh"
head -c $((1 << 30)) /dev/urandom > "$R/stage/big.bin"
cp "$R/stage/big.bin" "$R/rsync.bin"
mv "$R/stage/big.bin" "$R/m/big.bin"
for _ in $(seq 600); do
  grep -q '"consume".*big.bin' "$R/mstate/events.jsonl" 2>/dev/null && break
  sleep 0.1
done
cp "$R/m/big.bin" "$R/stage/edited.bin"
head -c $((1 << 20)) /dev/urandom |
  dd of="$R/stage/edited.bin" bs=1M seek=$((512 << 20))B conv=notrunc status=none
level_ground
T=$(date +%s.%N); rsync -a --no-whole-file "$R/stage/edited.bin" "$R/rsync.bin"
echo "rsync --no-whole-file $(echo "$(date +%s.%N) - $T" | bc) s"
level_ground
cp "$R/m/big.bin" /dev/null
# Per thread, and the whole process (which counts threads that ended, such as hashers).
cpu() { for t in /proc/$1/task/*; do awk '{printf "%s %d\n", $2, $14+$15}' $t/stat; done
        awk '{printf "all %d\n", $14+$15}' /proc/$1/stat; }
cpu $MP > "$R/master.cpu0"; cpu $SP > "$R/slave.cpu0"
perf_start
python3 - "$R" <<'PY'
import json, os, sys, time
from datetime import datetime
R = sys.argv[1]
t0 = time.time()
os.rename(R + "/stage/edited.bin", R + "/m/big.bin")
def consumes():
    with open(R + "/mstate/events.jsonl") as log:
        return sum('"consume"' in l and 'big.bin' in l for l in log)
while consumes() < 2:
    time.sleep(0.01)
print("total %.3f s" % (time.time() - t0))
for l in open(R + "/mstate/events.jsonl"):
    e = json.loads(l)
    if e["tag"] in ("notify", "consume") and "big.bin" in l:
        ts = datetime.fromisoformat(e["time"].replace("Z", "+00:00")).timestamp() - t0
        if ts > 0:
            print(e["tag"], "+%.3f" % ts, "fetched" in e and "fetched %s" % e["fetched"] or "")
PY
perf_stop
for side in master:$MP slave:$SP; do
  pid=${side#*:}
  cpu $pid | awk -v before="$R/${side%:*}.cpu0" -v name="${side%:*}" '
    BEGIN { while ((getline l < before) > 0) { split(l, f, " "); b[f[1]] += f[2] } }
    { n[$1] += $2 }
    END { out = ""; for (t in n) { c = (n[t] - b[t]) / 100; if (t != "all" && c > 0.02) out = out sprintf("%s %.2f, ", t, c) }
          printf "cpu s %s: %.2f = %s\n", name, (n["all"] - b["all"]) / 100, out }'
done
end_run
