"""The benchmark's Python worker: one start-up of /bin/true per line read ("rsandbox" or
"subprocess"); prints the nanoseconds it took (-1 when the run failed)."""

import subprocess
import sys
import time

import rsandbox

for line in sys.stdin:
    mode = line.strip()
    start = time.perf_counter_ns()
    if mode == "rsandbox":
        ok = rsandbox.run(["/bin/true"]).returncode == 0
    else:
        ok = subprocess.run(["/bin/true"]).returncode == 0
    took = time.perf_counter_ns() - start
    print(took if ok else -1, flush=True)
