#!/bin/bash
# N1's path (W1 over NATS) outside the bench, in parts: 40 files of 4 KiB written into the
# master 200 ms apart, on a nats-server as the test kit's (every write synced), then the
# log exported. Prints p10/p50/p90 of: the write to its notify's time in the log, the
# notify to the slave's consume, and the write to the consume (the log's times are the
# server's, on the same clock as the writes).
#
#   B=target/release/filesync benches/scripts/n1-phases.sh
#   NATS_SYNC=default ...   (the server's own flushing instead of every write synced)
#
# Nothing is deleted; every run's directory stays under $OUT.
set -euo pipefail
B=${B:-target/release/filesync}
OUT=${OUT:-${TMPDIR:-/tmp}/filesync-n1}
. "$(dirname "$0")/nats-hosted.sh"
sleep 0.5
python3 - "$R/m" > "$R/writes.txt" <<'PY'
import os, sys, time
for i in range(40):
    path = os.path.join(sys.argv[1], "f%03d" % i)
    at = time.time()
    with open(path, "w") as f:
        f.write("x" * 4096)
    print("f%03d %.6f" % (i, at))
    time.sleep(0.2)
PY
sleep 1
"$B" export --bus "$BUS" > "$R/events.jsonl"
kill $MP $SP; sleep 0.5; kill $NP
wait 2>/dev/null || true
python3 - "$R" <<'PY'
import json, statistics, sys
from datetime import datetime
R = sys.argv[1]
written = {l.split()[0]: float(l.split()[1]) for l in open(R + "/writes.txt")}
def at(event):
    return datetime.fromisoformat(event["time"].replace("Z", "+00:00")).timestamp()
notify, consume = {}, {}
for line in open(R + "/events.jsonl"):
    e = json.loads(line)
    if e.get("path") in written and e.get("tag") in ("notify", "consume"):
        (notify if e["tag"] == "notify" else consume)[e["path"]] = at(e)
def show(name, ms):
    ms = sorted(ms)
    print("%-16s p10 %.2f  p50 %.2f  p90 %.2f ms" % (name, ms[len(ms) // 10], statistics.median(ms), ms[9 * len(ms) // 10]))
paths = [p for p in written if p in notify and p in consume]
show("write->notify", [(notify[p] - written[p]) * 1e3 for p in paths])
show("notify->consume", [(consume[p] - notify[p]) * 1e3 for p in paths])
show("write->consume", [(consume[p] - written[p]) * 1e3 for p in paths])
PY
