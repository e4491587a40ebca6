#!/usr/bin/env python3
"""What w2-phases.sh and n2-phases.sh share: W2's tree, and when a run's notifies and
consumes were appended, from an events.jsonl: the first and last of each, and how many per
100 ms after T0 (a Unix time in seconds).

    benches/scripts/phases.py EVENTS.jsonl T0
    benches/scripts/phases.py --tree DIR      # W2's 10,000 files of 4 KiB in 100 dirs
"""
import json
import sys
from datetime import datetime


def make_tree(root):
    """W2's tree under `root`, synced: 100 dirs of 100 files of 4 KiB, each naming itself."""
    import os

    for d in range(100):
        os.makedirs(f"{root}/d{d:03}")
        for f in range(100):
            name = f"d{d:03}/f{f:04}\n".encode()
            with open(f"{root}/d{d:03}/f{f:04}", "wb") as fh:
                fh.write(name + b"x" * (4096 - len(name)))
    os.sync()


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
    if sys.argv[1] == "--tree":
        make_tree(sys.argv[2])
    else:
        report(sys.argv[1], float(sys.argv[2]))
