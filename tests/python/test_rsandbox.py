"""The Python module, run as the unprivileged user (tests/python/run)."""

import copy
import os
import pickle
import threading
import time

import pytest

import rsandbox
from conftest import Alarm, alarm_after, alive


def test_run_like_subprocess():
    r = rsandbox.run(["sh", "-c", "echo out; echo err >&2; exit 3"], capture_output=True, text=True)
    assert (r.returncode, r.stdout, r.stderr, r.verdict) == (3, "out\n", "err\n", "exit-nonzero")
    assert r.wall_time > 0 and r.cpu_time >= 0 and r.memory_peak > 0
    assert not r.timed_out and not r.oom_killed and not r.truncated


def test_output_not_captured_goes_to_the_callers_streams(capfd):
    r = rsandbox.run(["sh", "-c", "echo to-out; echo to-err >&2"])
    assert r.stdout is None and r.stderr is None and r.returncode == 0
    out, err = capfd.readouterr()
    assert out == "to-out\n" and err == "to-err\n"
    r = rsandbox.run(["sh", "-c", "echo kept; echo shown >&2"], stdout=rsandbox.PIPE)
    assert r.stdout == b"kept\n" and r.stderr is None
    assert capfd.readouterr().err == "shown\n"


def test_input_bytes_and_text():
    assert rsandbox.run(["cat"], input=b"\x00\x01", capture_output=True).stdout == b"\x00\x01"
    assert rsandbox.run(["cat"], input="héllo", capture_output=True, text=True).stdout == "héllo"


def test_signal_returncode_is_negative():
    r = rsandbox.run(["sh", "-c", "kill -TERM $$"], capture_output=True)
    assert r.returncode == -15 and r.signal == 15 and r.verdict == "signaled"


def test_timeout_expired_kills_the_tree():
    with pytest.raises(rsandbox.TimeoutExpired) as e:
        rsandbox.run(["sh", "-c", "sleep 100 & sleep 100"], timeout=0.3, capture_output=True)
    assert e.value.timeout == 0.3


def test_check_raises_called_process_error():
    with pytest.raises(rsandbox.CalledProcessError) as e:
        rsandbox.run(["sh", "-c", "echo partial; exit 2"], capture_output=True, check=True)
    assert e.value.returncode == 2 and e.value.stdout == b"partial\n"


def test_isolation_options_and_env():
    r = rsandbox.run(["sh", "-c", "id -u; hostname; echo $K; pwd"], capture_output=True, text=True,
                     uid=1234, hostname="py-box", env={"K": "v"}, cwd="/tmp")
    assert r.stdout == "1234\npy-box\nv\n/tmp\n"
    os.environ["RSBX_PY_SECRET"] = "leak"
    assert "RSBX_PY_SECRET" not in rsandbox.run(["env"], capture_output=True, text=True).stdout


def test_binds_and_network(tmp_path):
    (tmp_path / "f").write_text("bound\n")
    r = rsandbox.run(["cat", "/data/f"], capture_output=True, text=True, binds=[(str(tmp_path), "/data")])
    assert r.stdout == "bound\n"
    lo = rsandbox.run(["cat", "/proc/net/dev"], capture_output=True, text=True).stdout
    assert [l.split(":")[0].strip() for l in lo.splitlines()[2:]] == ["lo"]


def test_report_and_protections():
    r = rsandbox.run(["grep", "-E", "^(Seccomp|NoNewPrivs|CapEff):", "/proc/self/status"], capture_output=True, text=True)
    assert "Seccomp:\t2" in r.stdout and "NoNewPrivs:\t1" in r.stdout and "CapEff:\t0000000000000000" in r.stdout
    names = {f["name"]: f["status"] for f in r.report["features"]}
    assert names["seccomp"] == "enforced" and names["namespace.pid"] == "enforced"


def test_results_pickle_and_copy_with_their_report():
    r = rsandbox.run(["sh", "-c", "echo out; exit 2"], capture_output=True, text=True)
    with rsandbox.Pool(1) as pool:
        pooled = pool.run(["true"])
    for result in (r, pooled):
        for again in (pickle.loads(pickle.dumps(result)), copy.deepcopy(result), copy.copy(result)):
            assert again == result
            assert again.report == result.report and again.report["features"]
    assert pickle.loads(pickle.dumps(r)).stdout == "out\n"
    assert {f["name"] for f in pooled.report["features"]} >= {"pool", "seccomp"}
    # A result never asked for its report pickles it too.
    fresh = rsandbox.run(["true"])
    assert pickle.loads(pickle.dumps(fresh)).report["features"] == fresh.report["features"]


def test_output_limit_truncates():
    r = rsandbox.run(["head", "-c", "100000", "/dev/zero"], capture_output=True, output_limit=1000)
    assert len(r.stdout) == 1000 and r.truncated and r.verdict == "output-limit"
    assert r.stdout_truncated and not r.stderr_truncated, r
    r = rsandbox.run(["sh", "-c", "head -c 5000 /dev/zero >&2"], capture_output=True, output_limit=1000)
    assert r.stderr_truncated and not r.stdout_truncated and r.truncated, r
    # 0 keeps nothing, as on the other surfaces; sizes take the same suffixes as the CLI's.
    r = rsandbox.run(["echo", "x"], capture_output=True, output_limit=0)
    assert r.stdout == b"" and r.truncated and r.verdict == "output-limit", r
    assert rsandbox.run(["echo", "x"], capture_output=True, output_limit="1T").stdout == b"x\n"


MIB = 1 << 20


def test_100_mib_through_pipes_without_deadlock():
    # Both streams at once, with input the command reads only after writing: any one-stream-at-a-
    # time reader would deadlock here.
    script = "head -c 104857600 /dev/zero; head -c 104857600 /dev/zero >&2; wc -c"
    r = rsandbox.run(["sh", "-c", script], input=b"z" * (4 * MIB), capture_output=True, timeout=120)
    assert len(r.stderr) == 100 * MIB and r.stderr.count(b"\0") == 100 * MIB
    assert r.stdout[:100 * MIB].count(b"\0") == 100 * MIB and r.stdout[100 * MIB:] == b"4194304\n"
    assert not r.truncated and r.verdict == "ok"


def test_100_mib_through_popen_communicate():
    sb = rsandbox.Sandbox()
    with sb.spawn(["sh", "-c", "head -c 104857600 /dev/zero >&2; cat"], stdin=rsandbox.PIPE,
                  stdout=rsandbox.PIPE, stderr=rsandbox.PIPE) as p:
        out, err = p.communicate(b"y" * (8 * MIB), timeout=120)
    assert len(err) == 100 * MIB and out == b"y" * (8 * MIB) and p.returncode == 0


def test_communicate_timeout_keeps_output_and_resumes():
    sb = rsandbox.Sandbox()
    with sb.spawn(["sh", "-c", "echo first; sleep 1; echo second"], stdout=rsandbox.PIPE, text=True) as p:
        with pytest.raises(rsandbox.TimeoutExpired) as e:
            p.communicate(timeout=0.3)
        assert e.value.output == "first\n" and p.returncode is None
        out, err = p.communicate(timeout=10)
    assert out == "first\nsecond\n" and err is None and p.returncode == 0
    assert p.result is not None and p.result.stdout == out and p.result.verdict == "ok"


def test_popen_output_limit_truncates_without_blocking():
    sb = rsandbox.Sandbox(output_limit="1K")
    with sb.spawn(["head", "-c", "5000000", "/dev/zero"], stdout=rsandbox.PIPE) as p:
        out, _ = p.communicate(timeout=30)
    assert len(out) == 1024 and p.result is not None and p.result.truncated
    assert p.result.verdict == "output-limit"


def test_spec_timeout_enforced_during_popen_communicate():
    sb = rsandbox.Sandbox(timeout=0.5)
    with sb.spawn(["sh", "-c", "echo a; sleep 100"], stdout=rsandbox.PIPE) as p:
        out, _ = p.communicate(timeout=20)
    assert out == b"a\n" and p.result is not None and p.result.verdict == "wall-timeout"
    assert p.result.wall_time < 5


def test_popen_streams_as_files():
    sb = rsandbox.Sandbox()
    with sb.spawn(["sh", "-c", "while read l; do echo \"<$l>\"; done"], stdin=rsandbox.PIPE,
                  stdout=rsandbox.PIPE, text=True) as p:
        assert p.stdin is not None and p.stdout is not None
        p.stdin.write("one\n")
        assert p.stdout.readline() == "<one>\n"
        p.stdin.write("two\n")
        assert p.stdout.readline() == "<two>\n"
        p.stdin.close()
        assert p.wait(timeout=10) == 0
        assert p.report["features"]


def test_popen_like_process():
    sb = rsandbox.Sandbox(hostname="popen")
    with sb.spawn(["sh", "-c", "read x; echo got $x; hostname"], stdin=rsandbox.PIPE, stdout=rsandbox.PIPE, text=True) as p:
        assert p.pid > 0
        out, err = p.communicate("line\n")
    assert out == "got line\npopen\n" and err is None and p.returncode == 0
    with sb.spawn(["sleep", "30"]) as p:
        assert p.poll() is None
        with pytest.raises(rsandbox.TimeoutExpired):
            p.wait(timeout=0.1)
        p.kill()
        assert p.wait() == -9


def test_threads_spawn_concurrently():
    errors = []

    def worker(n):
        for i in range(50):
            r = rsandbox.run(["sh", "-c", f"echo {n}-{i}"], capture_output=True, text=True)
            if r.stdout != f"{n}-{i}\n":
                errors.append(r)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    # No sandbox left: once the library's reaper has collected the inits still tearing their
    # namespaces down, this process has no children.
    import time

    deadline = time.monotonic() + 10
    while _children() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert _children() == 0


def _children():
    me, found = str(os.getpid()), 0
    for pid in os.listdir("/proc"):
        try:
            with open(f"/proc/{pid}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        if stat.rsplit(")", 1)[-1].split()[1:2] == [me]:
            found += 1
    return found


def test_doctor():
    d = rsandbox.doctor()
    assert all({"name", "available", "detail", "remedy"} <= set(c) for c in d["checks"])
    assert {c["name"] for c in d["checks"]} >= {"user-namespaces", "seccomp", "landlock"}


def _interrupt_after(seconds):
    import signal

    timer = threading.Timer(seconds, lambda: os.kill(os.getpid(), signal.SIGINT))
    timer.start()
    return timer


def test_ctrl_c_during_wait_kills_the_sandbox():
    import time

    with rsandbox.Sandbox().spawn(["sleep", "30"]) as p:
        _interrupt_after(0.3)
        start = time.monotonic()
        with pytest.raises(KeyboardInterrupt):
            p.wait()
        assert time.monotonic() - start < 5
        assert p.poll() is not None, "the sandbox outlived the interrupt"


def test_ctrl_c_during_run_kills_the_sandbox(tmp_path):
    import time

    marker = tmp_path / "alive"
    start = time.monotonic()
    _interrupt_after(0.5)
    with pytest.raises(KeyboardInterrupt):
        rsandbox.run(["sh", "-c", f"while :; do echo x; sleep 0.05; touch {marker}; done"],
                     capture_output=True, rw_binds=[tmp_path])
    assert time.monotonic() - start < 5
    marker.unlink()
    time.sleep(0.3)
    assert not marker.exists(), "the sandbox outlived the interrupt"


@pytest.mark.parametrize("how", ["run", "run-devnull", "pool"])
def test_ctrl_c_without_captured_output_kills_the_sandbox_at_once(how):
    import subprocess
    import time

    start = time.monotonic()
    _interrupt_after(0.5)
    with pytest.raises(KeyboardInterrupt):
        if how == "pool":
            with rsandbox.Pool(1) as pool:
                pool.run(["sleep", "30"])
        else:
            stdout = subprocess.DEVNULL if how == "run-devnull" else None
            rsandbox.run(["sleep", "30"], stdout=stdout)
    # Control of the timing: the command would have run 30 s.
    assert time.monotonic() - start < 5


def test_large_or_infinite_time_values():
    # Past what a clock can hold: refused as configuration, not a crash.
    for kwargs in ({"timeout": 1e300}, {"timeout": 10 ** 400},
                   {"cpu_time": 1e300, "limits": "best-effort"}):
        with pytest.raises(rsandbox.ConfigError):
            rsandbox.run(["true"], **kwargs)
    with pytest.raises(rsandbox.ConfigError):
        rsandbox.run(["true"], memory=2 ** 70)
    # An infinite wait is a wait without limit.
    with rsandbox.Sandbox().spawn(["sh", "-c", "exit 3"]) as p:
        assert p.wait(timeout=float("inf")) == 3
    with rsandbox.Pool(1) as pool:
        assert pool.wait_full(float("inf"))
    # Control: the largest limit there is still runs.
    assert rsandbox.run(["true"], timeout=1e9).returncode == 0


def test_arguments_that_are_not_utf8_are_refused_by_name():
    arg = os.fsdecode(b"\xff")
    with pytest.raises(rsandbox.ConfigError, match="not UTF-8"):
        rsandbox.run(["echo", arg])
    with rsandbox.Pool(1) as pool:
        with pytest.raises(rsandbox.ConfigError, match="not UTF-8"):
            pool.run(["echo", arg])
    # Control: non-ASCII UTF-8 is fine.
    assert rsandbox.run(["echo", "\u00e9"], capture_output=True, text=True).stdout == "\u00e9\n"


def test_validate_checks_values_without_starting():
    for text in ('{"timeout": -1}', '{"hostname": ""}', '{"timeout": 1e300}',
                 '{"filesystem": {"mounts": [{"type": "tmpfs", "destination": "/"}]}}',
                 '{"process": {"cwd": "relative"}}', '{"process": {"env": {"A=B": "1"}}}',
                 '{"limits": {"pids": 0}}', '{"filesystem": {"workdir": "work"}}',
                 '{"filesystem": {"mounts": [{"type": "bind", "source": "rel", "destination": "/x"}]}}',
                 '{"process": {"cwd": "/w\\u0000rk"}}', '{"process": {"env": {"A": "x\\u0000y"}}}',
                 '{"process": {"args": [""]}}', '{"process": {"args": ["echo", "a\\u0000b"]}}'):
        with pytest.raises(rsandbox.ConfigError):
            rsandbox.Spec.from_json(text)
    with pytest.raises(rsandbox.ConfigError):
        rsandbox.Spec(timeout=5, hostname="x" * 65).validate()
    # Control: sound values pass, and a host path that does not exist is left to the start.
    rsandbox.Spec(timeout=5, hostname="ok").validate()
    # A spec without argv (given at each run) is sound.
    rsandbox.Spec.from_json('{"process": {"args": []}}')
    rsandbox.Spec.from_json('{"filesystem": {"root": {"directory": {"path": "/no-such-root"}}}}')


def test_text_output_cut_inside_a_character_keeps_the_result():
    # "aé" is 3 bytes in UTF-8: a 2-byte limit cuts the é in half.
    r = rsandbox.run(["printf", "a\u00e9"], capture_output=True, text=True, output_limit=2)
    assert r.stdout == "a" and r.truncated and r.verdict == "output-limit", r
    with rsandbox.Pool(1, output_limit=2) as pool:
        r = pool.run(["printf", "a\u00e9"], capture_output=True, text=True)
        assert r.stdout == "a" and r.truncated, r
    # Control: without the cut, the whole text; an invalid byte not at a cut still fails as
    # subprocess's decoding does.
    assert rsandbox.run(["printf", "a\u00e9"], capture_output=True, text=True).stdout == "a\u00e9"
    with pytest.raises(UnicodeDecodeError):
        rsandbox.run(["printf", "\\377"], capture_output=True, text=True)


FORKED = r'''
import os, sys
import rsandbox

rsandbox.run(["true"])
pid = os.fork()
if pid == 0:
    code = 0
    for _ in range(150):
        code |= rsandbox.run(["true"]).returncode
    import time
    time.sleep(0.5)
    zombies = 0
    me = str(os.getpid())
    for p in os.listdir("/proc"):
        try:
            stat = open(f"/proc/{p}/stat").read().rsplit(")", 1)[-1].split()
        except OSError:
            continue
        if stat[1] == me and stat[0] == "Z":
            zombies += 1
    fds = len(os.listdir("/proc/self/fd"))
    print(zombies, fds, flush=True)
    os._exit(code)
_, status = os.waitpid(pid, 0)
sys.exit(os.waitstatus_to_exitcode(status))
'''


def test_a_forked_child_reaps_its_own_sandboxes():
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-c", FORKED], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r
    zombies, fds = map(int, r.stdout.split())
    # Without its own reaper, the child would hold 64 dying inits and a descriptor for each.
    assert zombies <= 2 and fds < 20, r.stdout


def test_no_descriptor_leaks_into_the_sandbox():
    r, w = os.pipe()
    os.set_inheritable(r, True)
    out = rsandbox.run(["sh", "-c", "ls /proc/$$/fd"], capture_output=True, text=True).stdout
    os.close(r)
    os.close(w)
    assert out.split() == ["0", "1", "2"]


def test_python_m_rsandbox():
    import json
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "rsandbox", "run", "--", "sh", "-c", "exit 7"])
    assert r.returncode == 7
    r = subprocess.run([sys.executable, "-m", "rsandbox", "run", "--json", "--hostname", "cli-h", "--env",
                        "K=v", "--", "sh", "-c", "hostname; echo $K"], capture_output=True, text=True)
    result = json.loads(r.stdout)
    assert r.returncode == 0 and result["stdout"] == "cli-h\nv\n" and result["verdict"] == "ok", r
    assert result["report"]["features"]
    r = subprocess.run([sys.executable, "-m", "rsandbox", "run", "--", "no-such-command-rsbx"],
                       capture_output=True, text=True)
    assert r.returncode == 127 and "no-such-command-rsbx" in r.stderr
    r = subprocess.run([sys.executable, "-m", "rsandbox", "run", "--timeout", "0.2", "--", "sleep", "10"])
    assert r.returncode == 124
    d = subprocess.run([sys.executable, "-m", "rsandbox", "doctor"], capture_output=True, text=True)
    assert d.returncode == 0 and '"checks"' in d.stdout
    # A usage error is this program's own failure (125), never a code the command could give.
    for bad in (["run", "--no-such-option", "--", "true"], ["run", "--timeout", "soon", "--", "true"], []):
        r = subprocess.run([sys.executable, "-m", "rsandbox", *bad], capture_output=True, text=True)
        assert r.returncode == 125 and "error:" in r.stderr, (bad, r)


# What the child interpreters below check besides their own: a sandbox killed by a signal, and
# one killed at its timeout.
SIGNAL_AND_TIMEOUT = r"""
import rsandbox

def signal_and_timeout():
    r = rsandbox.run(["sh", "-c", "kill -9 $$"])
    print("signal", r.returncode, r.verdict)
    try:
        rsandbox.run(["sleep", "30"], timeout=0.3)
        print("timeout not raised")
    except rsandbox.TimeoutExpired:
        print("timeout raised")
"""

# In a child interpreter: SIGCHLD's disposition belongs to the whole process (and this one's
# subprocess module needs the default).
SIGCHLD_HOST = SIGNAL_AND_TIMEOUT + r"""
import signal, sys

def reap_all(signum, frame):
    import os
    try:
        while os.waitpid(-1, os.WNOHANG)[0] > 0:
            pass
    except ChildProcessError:
        pass

signal.signal(signal.SIGCHLD, signal.SIG_IGN if sys.argv[1] == "ignore" else reap_all)
for _ in range(3):
    r = rsandbox.run(["sh", "-c", "sh -c 'exit 5'; echo $?; exit 3"], capture_output=True, text=True)
    print("exit", r.returncode, r.stdout.strip(), r.verdict)
    signal_and_timeout()
"""


@pytest.mark.parametrize("host", ["ignore", "reap-all"])
def test_a_host_ignoring_or_reaping_sigchld_gets_every_result(host):
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-c", SIGCHLD_HOST, host], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    expected = ["exit 3 5 exit-nonzero", "signal -9 signaled", "timeout raised"] * 3
    assert r.stdout.splitlines() == expected, (r.stdout, r.stderr)


# In a child interpreter that installs a seccomp filter answering clone3 with ENOSYS, as the
# default profiles of Docker and Podman do: starts fall back to clone.
CLONE3_HOST = SIGNAL_AND_TIMEOUT + r"""
import ctypes, errno, struct

libc = ctypes.CDLL(None, use_errno=True)
SYS_CLONE3, SYS_SECCOMP = 435, 317
insns = [
    (0x20, 0, 0, 0),                           # load the syscall number
    (0x15, 0, 1, SYS_CLONE3),                  # clone3?
    (0x06, 0, 0, 0x00050000 | errno.ENOSYS),   # then fail with ENOSYS
    (0x06, 0, 0, 0x7FFF0000),                  # else allow
]
code = ctypes.create_string_buffer(b"".join(struct.pack("HBBI", *i) for i in insns))
class Prog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]
prog = Prog(len(insns), ctypes.addressof(code))
assert libc.prctl(38, 1, 0, 0, 0) == 0                      # no_new_privs
assert libc.syscall(SYS_SECCOMP, 1, 1, ctypes.byref(prog)) == 0, ctypes.get_errno()  # TSYNC
# Control: the filter is in force (without it, clone3 with no arguments is EINVAL).
assert libc.syscall(SYS_CLONE3, None, 0) == -1 and ctypes.get_errno() == errno.ENOSYS
for _ in range(3):
    r = rsandbox.run(["sh", "-c", "echo $$; hostname; exit 3"], capture_output=True, text=True)
    print("exit", r.returncode, " ".join(r.stdout.split()), r.verdict)
signal_and_timeout()
with rsandbox.Pool(1) as pool:
    print("pooled", pool.run(["sh", "-c", "exit 4"]).returncode)
"""


def test_a_host_refusing_clone3_gets_every_sandbox():
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-c", CLONE3_HOST], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    expected = ["exit 3 2 rsandbox exit-nonzero"] * 3 + ["signal -9 signaled", "timeout raised", "pooled 4"]
    assert r.stdout.splitlines() == expected, (r.stdout, r.stderr)


HALF_A_CHARACTER = "printf 'partial \\303'; "  # the first byte of a 2-byte UTF-8 sequence


def test_text_output_of_a_stopped_command_ending_inside_a_character_keeps_the_result():
    # Killed at the wall-clock limit, by a signal, or still running at communicate's timeout:
    # the output may stop inside a character, which is replaced rather than losing the result.
    sleeping = ["sh", "-c", HALF_A_CHARACTER + "exec sleep 30"]
    with pytest.raises(rsandbox.TimeoutExpired) as e:
        rsandbox.run(sleeping, capture_output=True, text=True, timeout=0.5)
    assert e.value.stdout == "partial \ufffd" and e.value.result.stdout == "partial \ufffd"
    assert e.value.result.verdict == "wall-timeout"
    r = rsandbox.run(["sh", "-c", HALF_A_CHARACTER + "kill -KILL $$"], capture_output=True, text=True)
    assert r.verdict == "signaled" and r.stdout == "partial \ufffd", r
    with rsandbox.Pool(1) as pool:
        with pytest.raises(rsandbox.TimeoutExpired) as e:
            pool.run(sleeping, capture_output=True, text=True, timeout=0.5)
        assert e.value.stdout == "partial \ufffd"
    with rsandbox.Sandbox().spawn(sleeping, stdout=rsandbox.PIPE, text=True) as p:
        with pytest.raises(rsandbox.TimeoutExpired) as e:
            p.communicate(timeout=0.5)
        assert e.value.stdout == "partial \ufffd"
        p.kill()
        assert p.communicate() == ("partial \ufffd", None) and p.returncode == -9
    # A handler other than "strict" is the caller's choice for the end too.
    r = rsandbox.run(["sh", "-c", HALF_A_CHARACTER + "kill -KILL $$"], capture_output=True, text=True,
                     errors="surrogateescape")
    assert r.stdout == "partial \udcc3", r
    # Controls, as subprocess decodes: a command ending of itself inside a character, and an
    # invalid byte before the end of a killed one's output, fail.
    with pytest.raises(UnicodeDecodeError):
        rsandbox.run(["sh", "-c", HALF_A_CHARACTER], capture_output=True, text=True)
    with pytest.raises(UnicodeDecodeError):
        rsandbox.run(["sh", "-c", "printf 'bad \\377 then \\303'; kill -KILL $$"], capture_output=True, text=True)


def test_popen_communicate_says_which_stream_was_truncated():
    cmd = ["sh", "-c", "head -c 5000 /dev/zero; head -c 10 /dev/zero >&2"]
    with rsandbox.Sandbox(output_limit=100).spawn(cmd, stdout=rsandbox.PIPE, stderr=rsandbox.PIPE) as p:
        out, err = p.communicate()
    r = p.result
    assert (len(out), len(err)) == (100, 10) and r is not None and r.verdict == "output-limit"
    assert r.truncated and r.stdout_truncated and not r.stderr_truncated, r
    swapped = ["sh", "-c", "head -c 10 /dev/zero; head -c 5000 /dev/zero >&2"]
    with rsandbox.Pool(1, output_limit=100) as pool:
        with pool.spawn(swapped, stdout=rsandbox.PIPE, stderr=rsandbox.PIPE) as p:
            p.communicate()
    r = p.result
    assert r is not None and r.truncated and r.stderr_truncated and not r.stdout_truncated, r


def test_an_exception_while_communicate_waits_kills_and_reaps_the_sandbox():
    mark = "30.0625"
    with rsandbox.Sandbox().spawn(["sleep", mark], stdout=rsandbox.PIPE) as p:
        start = time.monotonic()
        with alarm_after(0.5), pytest.raises(Alarm):
            p.communicate()
        assert time.monotonic() - start < 5
        assert p.returncode == -9 and p.result is not None and p.result.verdict == "signaled"
        assert alive(mark) == 0, "the sandbox outlived the exception"


def test_an_exception_while_wait_waits_keeps_the_result():
    # The native wait kills and reaps the sandbox: the Process says so.
    with rsandbox.Sandbox().spawn(["sleep", "30"]) as p:
        with alarm_after(0.5), pytest.raises(Alarm):
            p.wait()
        assert p.returncode == -9 and p.result is not None and p.result.verdict == "signaled", p
    with rsandbox.Sandbox().spawn(["sleep", "30"]) as p:
        _interrupt_after(0.5)
        with pytest.raises(KeyboardInterrupt):
            p.wait(timeout=20)
        assert p.returncode == -9 and p.result is not None, p


_BIG = []


def _hog_gil(until):
    """Holds the GIL in long C calls (a multiplication of big ints takes ~1 s) until `until` is set."""
    if not _BIG:
        _BIG.append(7 ** 2_000_000)
    while not until.is_set():
        _BIG[0] * _BIG[0]


@pytest.mark.parametrize("how", ["run", "run-main-thread", "pool-run", "wait"])
def test_wall_clock_limit_holds_while_another_thread_holds_the_gil(how):
    # The waiting that enforces the limit must not wait for the GIL: another thread may hold it
    # for seconds in one C call.
    if not _BIG:
        _BIG.append(7 ** 2_000_000)
    pool = rsandbox.Pool(1) if how == "pool-run" else None
    p = rsandbox.Sandbox(timeout=0.5).spawn(["sleep", "30"]) if how == "wait" else None
    results = []
    done = threading.Event()

    def job():
        try:
            if pool is not None:
                pool.run(["sleep", "30"], timeout=0.5)
            elif p is not None:
                p.wait()
                results.append(p.result)
            else:
                rsandbox.run(["sleep", "30"], timeout=0.5)
        except rsandbox.TimeoutExpired as e:
            results.append(e.result)
        finally:
            done.set()

    try:
        if how == "run-main-thread":
            hog = threading.Thread(target=_hog_gil, args=(done,))
            hog.start()
            time.sleep(0.05)
            job()
            hog.join()
        else:
            worker = threading.Thread(target=job)
            worker.start()
            time.sleep(0.1)  # (the job is in its native call, without the GIL)
            _hog_gil(done)
            worker.join()
    finally:
        if pool is not None:
            pool.close()
    [r] = results
    assert r.verdict == "wall-timeout" and r.wall_time < 1.0, r


def test_python_m_rsandbox_json_on_timeout_and_ctrl_c():
    import json
    import signal
    import subprocess
    import sys

    cli = [sys.executable, "-m", "rsandbox", "run"]
    r = subprocess.run(cli + ["--json", "--", "true"], capture_output=True, text=True, timeout=60)
    result = json.loads(r.stdout)
    assert r.returncode == 0 and result["report"]["features"], r
    assert not any(key.startswith("_") for key in result), sorted(result)
    # --timeout: still the result (exit status 124).
    r = subprocess.run(cli + ["--json", "--timeout", "0.3", "--", "sh", "-c", "echo started; exec sleep 10"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 124, r
    result = json.loads(r.stdout)
    assert result["verdict"] == "wall-timeout" and result["stdout"] == "started\n", result
    # Ctrl-C: exit status 130, no traceback, the sandbox gone.
    mark = "30.0875"
    with subprocess.Popen(cli + ["--", "sleep", mark], stderr=subprocess.PIPE, text=True) as p:
        deadline = time.monotonic() + 30
        while not alive(mark, settle=0) and time.monotonic() < deadline:
            time.sleep(0.05)
        p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=30)
    assert p.returncode == 130 and "Traceback" not in err, (p.returncode, err)
    assert alive(mark) == 0


def test_a_callers_signal_wakeup_fd_is_kept_and_told_of_signals():
    # While a run waits, the main thread's wakeup fd is the library's (it says when a signal
    # came); the caller's own (asyncio's self-pipe) is restored after and gets the signal numbers.
    import signal
    import socket

    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    theirs.setblocking(False)
    old_fd = signal.set_wakeup_fd(theirs.fileno())
    old_handler = signal.signal(signal.SIGALRM, lambda signum, frame: None)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.3)
        # A handler that returns does not stop the run.
        assert rsandbox.run(["sleep", "1"]).returncode == 0
        assert ours.recv(16) == bytes([signal.SIGALRM])
        assert signal.set_wakeup_fd(theirs.fileno()) == theirs.fileno()
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old_handler)
        signal.set_wakeup_fd(old_fd)
        ours.close()
        theirs.close()
