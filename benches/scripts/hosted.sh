# Sourced by w2-phases.sh, w3-phases.sh and w7-phases.sh: a master hosting its bus and a
# slave beside it, from the binary in $B, in a new run directory under $OUT (set by the
# caller). Sets R (the run's directory: m/ the master's, s/ the slave's, stage/ for the
# workload), MP and SP (the processes), and returns once the slave's `ready` is in the
# bus's log. Defines perf_start / perf_stop: `perf` of the master (PERFMASTER=1) or the
# slave (PERFSLAVE=1) into $OUT/<side>.data, around the workload; and level_ground, the
# bench's `level_ground`: with WARM=GiB set, that much written and deleted (memory the
# guest touched lately), then `sync` (no dirty backlog), before each timed tool;
# cpu_mark / cpu_report: each agent's CPU seconds from the mark on, per thread and in all
# (ended threads, such as hashers, counted in all); and end_run: stops both agents and
# truncates the run's large files (its logs stay).
mkdir -p "$OUT"
R=$(mktemp -d "$OUT/run.XXXX")
mkdir -p "$R/m" "$R/s" "$R/stage"
"$B" master --dir "$R/m" --listen 127.0.0.1:0 --state "$R/mstate" 2>"$R/master.log" &
MP=$!
for _ in $(seq 50); do grep -q "listening on" "$R/master.log" && break; sleep 0.1; done
ADDR=$(grep -o "listening on [0-9.:]*" "$R/master.log" | awk '{print $3}')
"$B" slave --dir "$R/s" --bus "$ADDR" --state "$R/sstate" 2>"$R/slave.log" &
SP=$!
for _ in $(seq 100); do
  grep -q '"agent":"slave","tag":"ready"' "$R/mstate/events.jsonl" 2>/dev/null && break
  sleep 0.1
done

PP=""
perf_start() {  # [samples per second, 497 unless given]
  local hz=${1:-497}
  if [ -n "${PERFMASTER:-}" ]; then perf record -p $MP --call-graph dwarf,16384 -F $hz -o "$OUT/master.data" 2>/dev/null & PP=$!; fi
  if [ -n "${PERFSLAVE:-}" ]; then perf record -p $SP --call-graph dwarf,16384 -F $hz -o "$OUT/slave.data" 2>/dev/null & PP=$!; fi
}
perf_stop() {
  if [ -n "$PP" ]; then kill -INT $PP; sleep 2; fi
}
level_ground() {
  if [ -n "${WARM:-}" ]; then
    dd if=/dev/zero of="$R/warm" bs=1M count=$((WARM << 10)) status=none
    rm "$R/warm"
  fi
  sync
}
# Per thread, and the whole process (which counts threads that ended).
cpu_of() { for t in /proc/$1/task/*; do awk '{printf "%s %d\n", $2, $14+$15}' $t/stat; done
           awk '{printf "all %d\n", $14+$15}' /proc/$1/stat; }
cpu_mark() { cpu_of $MP > "$R/master.cpu0"; cpu_of $SP > "$R/slave.cpu0"; }
cpu_report() {
  for side in master:$MP slave:$SP; do
    cpu_of ${side#*:} | awk -v before="$R/${side%:*}.cpu0" -v name="${side%:*}" '
      BEGIN { while ((getline l < before) > 0) { split(l, f, " "); b[f[1]] += f[2] } }
      { n[$1] += $2 }
      END { out = ""; for (t in n) { c = (n[t] - b[t]) / 100; if (t != "all" && c > 0.02) out = out sprintf("%s %.2f, ", t, c) }
            printf "cpu s %s: %.2f = %s\n", name, (n["all"] - b["all"]) / 100, out }'
  done
}
end_run() {
  kill $MP $SP
  wait 2>/dev/null || true
  find "$R" -type f -size +10M -exec truncate -s 0 {} +
}
