#!/usr/bin/env python3
"""When a run's notifies and consumes were appended, from an events.jsonl: the first and
last of each, and how many per 100 ms after T0 (a Unix time in seconds).

    benches/scripts/phases.py EVENTS.jsonl T0

Shared by w2-phases.sh and n2-phases.sh.
"""
import json
import sys
from datetime import datetime


def report(events, t0):
    first, last, hist = {}, {}, {}
    for line in open(events):
        e = json.loads(line)
        if e["tag"] in ("notify", "consume"):
            ts = datetime.fromisoformat(e["time"].replace("Z", "+00:00")).timestamp() - t0
            first.setdefault(e["tag"], ts)
            last[e["tag"]] = ts
            bucket = hist.setdefault(int(ts * 10), {})
            bucket[e["tag"]] = bucket.get(e["tag"], 0) + 1
    for tag in first:
        print(tag, "first +%.3f last +%.3f" % (first[tag], last[tag]))
    print(
        "per 100 ms, notifies/consumes:",
        " ".join(
            "%d:%d/%d" % (b, hist[b].get("notify", 0), hist[b].get("consume", 0))
            for b in sorted(hist)
        ),
    )


if __name__ == "__main__":
    report(sys.argv[1], float(sys.argv[2]))
