#!/usr/bin/env python3
"""What w3-phases.sh and w7-phases.sh time: a file moved into the master directory of run
R (from R/stage/NAME to R/m/big.bin) until the bus's log holds the slave's CONSUMES-th
consume of big.bin. Prints the total, then each notify and consume of big.bin after the
move, with its time from the move (and a consume's `fetched`).

    benches/scripts/move-in.py R NAME CONSUMES
"""
import json
import os
import sys
import time
from datetime import datetime


def main(run, name, consumes):
    log = f"{run}/mstate/events.jsonl"

    def seen():
        with open(log) as lines:
            return sum('"consume"' in l and "big.bin" in l for l in lines)

    t0 = time.time()
    os.rename(f"{run}/stage/{name}", f"{run}/m/big.bin")
    while seen() < consumes:
        time.sleep(0.01)
    print("total %.3f s" % (time.time() - t0))
    for line in open(log):
        event = json.loads(line)
        if event["tag"] not in ("notify", "consume") or "big.bin" not in line:
            continue
        at = datetime.fromisoformat(event["time"].replace("Z", "+00:00")).timestamp() - t0
        if at > 0:
            fetched = f" fetched {event['fetched']}" if "fetched" in event else ""
            print(event["tag"], "+%.3f%s" % (at, fetched))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
