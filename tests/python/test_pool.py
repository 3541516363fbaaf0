"""rsandbox.Pool: sandboxes started ahead of their jobs, one job each."""

import os
import threading
import time

import pytest

import rsandbox
from conftest import Alarm, alarm_after

# Processes counted by the shell's own glob (a pipeline's processes start at their own pace).
PROBE = ("grep -E '^(Seccomp|NoNewPrivs|CapEff|CapBnd):' /proc/self/status; id -u; hostname; "
         "set -- /proc/[0-9]*; echo $#")


def pool_entry(result):
    return next((f for f in result.report["features"] if f["name"] == "pool"), None)


def test_pooled_run_is_isolated_like_a_cold_run():
    with rsandbox.Pool(2, hostname="pooled") as pool:
        assert pool.wait_full(30)
        pooled = pool.run(["sh", "-c", PROBE], capture_output=True, text=True)
        cold = rsandbox.run(["sh", "-c", PROBE], capture_output=True, text=True, hostname="pooled")
        assert pooled.stdout == cold.stdout and pooled.returncode == 0, (pooled, cold)
        entry = pool_entry(pooled)
        assert entry and entry["status"] == "enforced" and "one job per sandbox" in entry["detail"]
        assert pool_entry(cold) is None


def test_no_state_passes_between_jobs():
    with rsandbox.Pool(1, tmpfs=["/scratch"]) as pool:
        first = pool.run(["sh", "-c", "echo s >/scratch/left; (sleep 30 &); echo $$"], capture_output=True)
        assert first.returncode == 0
        for _ in range(3):
            r = pool.run(["sh", "-c", "cat /scratch/left 2>/dev/null || echo clean; ps -e -o comm= | grep -c sleep"],
                         capture_output=True, text=True)
            assert r.stdout == "clean\n0\n", r


def test_streams_env_cwd_status_input_and_errors():
    with rsandbox.Pool(2) as pool:
        r = pool.run(["sh", "-c", 'cat; echo "$K" >&2; pwd; exit 3'], input="in\n", capture_output=True,
                     text=True, env={"K": "v"}, cwd="/tmp")
        assert (r.returncode, r.stdout, r.stderr, r.verdict) == (3, "in\n/tmp\n", "v\n", "exit-nonzero")
        with pytest.raises(FileNotFoundError):
            pool.run(["no-such-command-rsbx"])
        with pytest.raises(rsandbox.SetupError) as e:
            pool.run(["true"], cwd="/no/such/dir")
        assert e.value.step == "chdir"
        with pytest.raises(rsandbox.CalledProcessError):
            pool.run(["false"], check=True)
        with pytest.raises(rsandbox.ConfigError):
            pool.run([])


def test_job_timeout_counts_from_the_job():
    with rsandbox.Pool(1, timeout=0.5) as pool:
        time.sleep(0.8)
        assert pool.run(["sh", "-c", "sleep 0.2; echo ok"], capture_output=True).stdout == b"ok\n"
        with pytest.raises(rsandbox.TimeoutExpired) as e:
            pool.run(["sleep", "10"], timeout=0.3)
        assert e.value.result.verdict == "wall-timeout", e.value.result


def test_popen_like_spawn_from_a_pool():
    with rsandbox.Pool(1) as pool:
        with pool.spawn(["cat"], stdin=rsandbox.PIPE, stdout=rsandbox.PIPE) as p:
            out, _ = p.communicate(b"through a pool", timeout=10)
        assert out == b"through a pool" and p.returncode == 0


def test_threads_share_a_pool():
    errors = []
    with rsandbox.Pool(4) as pool:
        def worker(n):
            for i in range(25):
                r = pool.run(["echo", f"{n}-{i}"], capture_output=True, text=True)
                if r.stdout != f"{n}-{i}\n":
                    errors.append(r)

        threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert errors == []


def _agents():
    found = 0
    for pid in os.listdir("/proc"):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if f.read().startswith(b"rsandbox-agent"):
                    found += 1
        except OSError:
            pass
    return found


def test_closing_a_pool_kills_its_waiting_sandboxes():
    import gc

    before = _agents()
    pool = rsandbox.Pool(3)
    assert pool.wait_full(30)
    assert _agents() >= before + 3
    pool.close()
    gc.collect()
    deadline = time.monotonic() + 10
    while _agents() > before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _agents() <= before
    with pytest.raises(ValueError):
        pool.run(["true"])


@pytest.mark.parametrize("size", [0, -1, "2", 1.5, True])
def test_bad_pool_size(size):
    with pytest.raises(rsandbox.ConfigError):
        rsandbox.Pool(size)


DETACHED_POOL = r'''
import os, time
import rsandbox
spec = rsandbox.Spec()
spec.data["die_with_parent"] = False
def zombies():
    n = 0
    for p in os.listdir("/proc"):
        try:
            stat = open(f"/proc/{p}/stat").read().rsplit(")", 1)[-1].split()
        except OSError:
            continue
        if stat[1] == str(os.getpid()) and stat[0] == "Z":
            n += 1
    return n
for _ in range(3):
    pool = rsandbox.Pool(3, spec)
    pool.wait_full(30)
    assert pool.run(["true"]).returncode == 0
    pool.wait_full(30)
    pool.close()
deadline = time.monotonic() + 10
while zombies() and time.monotonic() < deadline:
    time.sleep(0.05)
print(zombies())
'''


def test_closing_a_pool_ends_and_reaps_its_sandboxes_even_without_die_with_parent():
    # The sandboxes a pool started ahead were never the caller's: closing the pool ends them and
    # reaps their inits, whatever die_with_parent says (else one zombie per unused sandbox).
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-c", DETACHED_POOL], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "0", r


def test_wait_full_lets_ctrl_c_through():
    with rsandbox.Pool(2) as pool:
        assert pool.wait_full(30)
        # One sandbox taken, one ready: the pool does not refill while the job runs (a job counts
        # as running until its result is taken), so the pool is not full again before it ends.
        with pool.spawn(["sleep", "30"]):
            start = time.monotonic()
            with alarm_after(0.5), pytest.raises(Alarm):
                pool.wait_full(10)
            assert time.monotonic() - start < 3
            _interrupt_after(0.3)
            with pytest.raises(KeyboardInterrupt):
                pool.wait_full(float("inf"))
        # Control: without a job, it fills.
        assert pool.wait_full(30)


def _interrupt_after(seconds):
    import signal

    timer = threading.Timer(seconds, lambda: os.kill(os.getpid(), signal.SIGINT))
    timer.start()
    return timer
