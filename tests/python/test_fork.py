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
            for what in (lambda: running.wait(), lambda: running.kill(), lambda: pool.run(["true"])):
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
    assert lines == ["refused refused refused 4", "0 5 6 7"], r
