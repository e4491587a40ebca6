#!/bin/bash
# W3 outside the bench, for profiling and A/B runs of two builds: a master hosting its bus
# and a slave run from the binary in $B; one 1 GiB file of random bytes is written and
# synced, copied with `rsync -a` (the baseline, into memory as untouched as filesync's),
# then moved into the master. Prints: rsync -a time, the time until the slave's consume
# is in the bus's events.jsonl, when the notify came, and the CPU seconds of each thread
# of the master (with its bus) and of the slave.
#
#   B=target/release/filesync benches/scripts/w3-phases.sh
#   PERFSLAVE=1 (or PERFMASTER=1) ... records `perf` of that process into $OUT/<side>.data
#   WARM=2 ... writes and deletes 2 GiB before each timed tool (hosted.sh's level_ground)
#
# The run's large files are truncated at the end (its logs stay).
set -euo pipefail
B=${B:-target/release/filesync}
OUT=${OUT:-${TMPDIR:-/tmp}/filesync-w3}
. "$(dirname "$0")/hosted.sh"
head -c $((1 << 30)) /dev/urandom > "$R/stage/big.bin"
level_ground
T=$(date +%s.%N); rsync -a "$R/stage/big.bin" "$R/rsync.bin"; echo "rsync -a $(echo "$(date +%s.%N) - $T" | bc) s"
level_ground
cpu_mark
perf_start
"$(dirname "$0")/move-in.py" "$R" big.bin 1
perf_stop
cpu_report
end_run
