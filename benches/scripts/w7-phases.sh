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
cpu_mark
perf_start
"$(dirname "$0")/move-in.py" "$R" edited.bin 2
perf_stop
cpu_report
end_run
