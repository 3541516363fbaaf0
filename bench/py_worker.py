"""The benchmark's Python worker: one start-up of /bin/true per line read ("rsandbox",
"pool": a warm rsandbox.Pool of 2, or "subprocess"); prints the nanoseconds it took (-1 when the
run failed). "settle" waits until the pool is full again."""

import subprocess
import sys
import time

import rsandbox

pool = rsandbox.Pool(2)
pool.wait_full(30)

for line in sys.stdin:
    mode = line.strip()
    start = time.perf_counter_ns()
    if mode == "rsandbox":
        ok = rsandbox.run(["/bin/true"]).returncode == 0
    elif mode == "pool":
        ok = pool.run(["/bin/true"]).returncode == 0
    elif mode == "settle":
        ok = pool.wait_full(30)
    else:
        ok = subprocess.run(["/bin/true"]).returncode == 0
    took = time.perf_counter_ns() - start
    print(took if ok else -1, flush=True)
