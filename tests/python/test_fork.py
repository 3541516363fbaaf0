"""A process forked from one that uses rsandbox (os.fork, multiprocessing's fork start): it never
hangs on the library's state, and it never takes or ends its parent's sandboxes. Each case runs
in a fresh interpreter, so a hang or a crash fails the case instead of the suite."""

import subprocess
import sys
import textwrap


def script(body):
    r = subprocess.run([sys.executable, "-c", textwrap.dedent(body)], capture_output=True,
                       text=True, timeout=180)
    return r


def test_children_forked_while_threads_start_sandboxes_start_their_own():
    # Two threads start sandboxes without pause and a pool refills in the background while the
    # main thread forks: a child that copied one of the library's locks held by another thread
    # would wait for it forever (the alarm ends it with SIGALRM).
    r = script("""
        import os, signal, sys, threading
        import rsandbox
        stop = threading.Event()
        def busy():
            while not stop.is_set():
                rsandbox.run(["true"])
        threads = [threading.Thread(target=busy) for _ in range(2)]
        for t in threads:
            t.start()
        pool = rsandbox.Pool(1)
        hung = failed = 0
        for i in range(60):
            if i % 4 == 0:
                pool.run(["true"])
            pid = os.fork()
            if pid == 0:
                signal.alarm(20)
                os._exit(rsandbox.run(["sh", "-c", "exit 3"]).returncode)
            _, status = os.waitpid(pid, 0)
            if os.WIFSIGNALED(status):
                hung += 1
            elif os.waitstatus_to_exitcode(status) != 3:
                failed += 1
        stop.set()
        for t in threads:
            t.join()
        pool.close()
        print(hung, failed)
    """)
    assert r.returncode == 0, r
    assert r.stdout.split() == ["0", "0"], r


def test_a_forked_copy_neither_takes_nor_ends_the_parents_sandboxes():
    r = script("""
        import gc, os, sys
        import rsandbox
        running = rsandbox.Sandbox().spawn(["sh", "-c", "sleep 1; exit 5"])
        pool = rsandbox.Pool(1)
        pool.wait_full(30)
        pooled = pool.spawn(["sh", "-c", "sleep 1; exit 6"])
        pid = os.fork()
        if pid == 0:
            out = []
            # The copies refuse to wait or signal, and say why.
            for what in (lambda: running.wait(), lambda: running.kill(), lambda: running.communicate(),
                         lambda: pool.run(["true"])):
                try:
                    what()
                    out.append("allowed")
                except rsandbox.SandboxError as e:
                    out.append("refused" if "fork" in str(e) else "other: %s" % e)
            # Its own sandbox works.
            out.append(str(rsandbox.run(["sh", "-c", "exit 4"]).returncode))
            # Dropping the copies (as an exiting child does) touches nothing of the parent's.
            del running, pooled, pool
            gc.collect()
            print(" ".join(out), flush=True)
            sys.exit(0)
        _, status = os.waitpid(pid, 0)
        print(os.waitstatus_to_exitcode(status), running.wait(), pooled.wait(),
              pool.run(["sh", "-c", "exit 7"]).returncode)
    """)
    assert r.returncode == 0, r
    lines = r.stdout.splitlines()
    assert lines == ["refused refused refused refused 4", "0 5 6 7"], r


def test_children_forked_during_starts_do_not_hold_them_up():
    # A child forked while another thread's start holds the sandbox's ends of its pipes gets
    # copies of them; the start waits for their end of file, so the child closes its copies at
    # once (else each start overlapping a fork would wait for the child to exit: 3 s here).
    r = script("""
        import os, threading, time
        import rsandbox
        stop = threading.Event()
        worst = [0.0, 0.0, 0.0]
        pool = rsandbox.Pool(2)
        def busy(i, run):
            while not stop.is_set():
                t = time.monotonic()
                assert run(["true"]).returncode == 0
                worst[i] = max(worst[i], time.monotonic() - t)
        def fed(argv):
            # The command reads its input to the end: a copy of the stdin pipe's write end
            # would keep it waiting.
            return rsandbox.run(["cat"], input=b"input", capture_output=True)
        threads = [threading.Thread(target=busy, args=(0, rsandbox.run)),
                   threading.Thread(target=busy, args=(1, pool.run)),
                   threading.Thread(target=busy, args=(2, fed))]
        for t in threads:
            t.start()
        kids = []
        for _ in range(20):
            pid = os.fork()
            if pid == 0:
                time.sleep(3)
                os._exit(0)
            kids.append(pid)
            time.sleep(0.05)
        time.sleep(0.5)
        stop.set()
        for t in threads:
            t.join()
        for k in kids:
            os.waitpid(k, 0)
        pool.close()
        print("%.2f %.2f %.2f" % tuple(worst))
    """)
    assert r.returncode == 0, r
    cold, pooled, fed = map(float, r.stdout.split())
    assert cold < 2 and pooled < 2 and fed < 2, r.stdout


def test_a_sandbox_dies_with_its_caller_though_a_forked_child_lives_on():
    # The caller's end of the control pipe (its closing is the caller's death) is not left in a
    # child the caller forked: a sandbox of a caller killed with SIGKILL ends at once, not when
    # that child exits (10 s here).
    r = script("""
        import os, signal, time
        import rsandbox
        r, w = os.pipe()
        caller = os.fork()
        if caller == 0:
            p = rsandbox.Sandbox().spawn(["sleep", "60"])
            if os.fork() == 0:
                time.sleep(10)
                os._exit(0)
            os.write(w, b"%d\\n" % p.pid)
            time.sleep(60)
            os._exit(0)
        init = int(os.read(r, 64))
        os.kill(caller, signal.SIGKILL)
        os.waitpid(caller, 0)
        def alive(pid):
            try:
                return open("/proc/%d/stat" % pid).read().rsplit(")", 1)[1].split()[0] != "Z"
            except OSError:
                return False
        start = time.monotonic()
        while alive(init) and time.monotonic() - start < 5:
            time.sleep(0.05)
        print("gone" if not alive(init) else "alive", round(time.monotonic() - start, 1))
    """)
    assert r.returncode == 0, r
    assert r.stdout.split()[0] == "gone", r.stdout
