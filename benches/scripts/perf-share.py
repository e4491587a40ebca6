#!/usr/bin/env python3
"""Share of samples under each function, from `perf script` output on stdin.

    perf script -i slave.data | benches/scripts/perf-share.py [TOP] [--thread NAME] [KEY ...]

Without KEYs: the TOP (default 60) functions by inclusive share (a function counted once
per sample it is on the stack of), then the TOP self shares. With KEYs: the share of
samples whose stack contains each KEY (a substring), e.g. `Pack::append statx`.
"""
import collections
import re
import sys

args = sys.argv[1:]
top = int(args.pop(0)) if args and args[0].isdigit() else 60
thread = None
if "--thread" in args:
    at = args.index("--thread")
    thread = args[at + 1]
    del args[at : at + 2]
keys = args

inclusive, own, matched = collections.Counter(), collections.Counter(), collections.Counter()
samples = 0
comm, stack = None, []


def flush():
    global samples
    if not stack or (thread and comm != thread):
        return
    samples += 1
    for key in keys:
        if any(key in frame for frame in stack):
            matched[key] += 1
    for frame in set(stack):
        inclusive[frame] += 1
    own[stack[0]] += 1


for line in sys.stdin:
    if not line.strip():
        flush()
        comm, stack = None, []
    elif line[0] not in " \t":
        comm = line.split()[0]
    else:
        parts = line.strip().split(None, 1)
        if len(parts) == 2:
            symbol = re.sub(r"\+0x[0-9a-f]+", "", parts[1])
            symbol = re.sub(r" \(.*\)$", "", symbol)
            stack.append(re.sub(r"::h[0-9a-f]{16}$", "", symbol)[:110])
flush()
print("samples", samples)
if keys:
    for key in keys:
        print("%5.1f%% %s" % (100 * matched[key] / max(samples, 1), key))
else:
    print("--- inclusive")
    for frame, count in inclusive.most_common(top):
        print("%5.1f%% %s" % (100 * count / samples, frame))
    print("--- self")
    for frame, count in own.most_common(top // 2):
        print("%5.1f%% %s" % (100 * count / samples, frame))
