# Sourced by n1-phases.sh and n2-phases.sh: a nats-server configured as the test kit's
# (every write synced; NATS_SYNC=default leaves the server's own flushing, as
# FILESYNC_NATS_SYNC=default does), then a master and a slave on it from the binary in $B,
# in a new run directory under $OUT (set by the caller). Sets R (the run's directory: m/
# the master's, s/ the slave's, stage/ for the workload), BUS, NP, MP and SP (the
# processes), and returns once the slave says it is ready.
mkdir -p "$OUT"
R=$(mktemp -d "$OUT/run.XXXX")
mkdir -p "$R/m" "$R/s" "$R/stage"
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
SYNC="  sync_interval: always"
[ "${NATS_SYNC:-}" = default ] && SYNC=""
printf 'listen: "127.0.0.1:%s"\nmax_payload: 8MB\njetstream {\n  store_dir: "%s"\n%s\n}\n' \
  "$PORT" "$R/nats" "$SYNC" > "$R/nats.conf"
nats-server -c "$R/nats.conf" 2>"$R/nats.log" &
NP=$!
for _ in $(seq 50); do grep -q "Server is ready" "$R/nats.log" && break; sleep 0.1; done
BUS=nats://127.0.0.1:$PORT
"$B" master --dir "$R/m" --bus "$BUS" --state "$R/mstate" 2>"$R/master.log" &
MP=$!
sleep 1
"$B" slave --dir "$R/s" --bus "$BUS" --state "$R/sstate" 2>"$R/slave.log" &
SP=$!
for _ in $(seq 100); do grep -q "ready" "$R/slave.log" 2>/dev/null && break; sleep 0.1; done
