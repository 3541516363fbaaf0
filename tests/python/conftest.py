"""Shared helpers of the Python tests (run by tests/python/run as root and as the test user)."""

import contextlib
import os
import shutil
import signal
import time
from pathlib import Path
from typing import Iterator, Optional

import pytest


def must_work() -> bool:
    return os.environ.get("RSANDBOX_MUST_WORK") == "1"


def skip(reason: str) -> None:
    """Skips the test, or fails it under RSANDBOX_MUST_WORK=1 (CI: this machine has the feature)."""
    if must_work():
        pytest.fail(f"skipped under RSANDBOX_MUST_WORK=1: {reason}")
    pytest.skip(reason)


def test_cgroup() -> Optional[str]:
    """The delegated cgroup subtree the test setup made for this user (RSANDBOX_TEST_CGROUP)."""
    path = os.environ.get("RSANDBOX_TEST_CGROUP")
    if not path or not os.access(path, os.W_OK):
        return None
    return path


test_cgroup.__test__ = False  # type: ignore[attr-defined]


@pytest.fixture
def busybox_root(tmp_path: Path) -> Path:
    """A tiny rootfs of static busybox."""
    busybox = shutil.which("busybox") or next(
        (p for p in ("/bin/busybox", "/usr/bin/busybox") if os.path.exists(p)), None)
    if busybox is None:
        skip("busybox-static is not installed (apt-get install busybox-static)")
    root = tmp_path / "rootfs"
    for d in ("bin", "proc", "dev", "tmp", "etc", "work"):
        (root / d).mkdir(parents=True)
    shutil.copy(busybox, root / "bin/busybox")
    for tool in ("sh", "cat", "echo", "id", "ls", "touch", "mkdir", "rm", "head", "wc"):
        (root / "bin" / tool).symlink_to("busybox")
    (root / "etc/marker").write_text("busybox-rootfs\n")
    return root


class Alarm(Exception):
    """Raised by the SIGALRM handler of `alarm_after`: a signal handler raising, as Ctrl-C does."""


@contextlib.contextmanager
def alarm_after(seconds: float) -> Iterator[None]:
    """Raises Alarm in the main thread after `seconds` (from a signal handler, like Ctrl-C)."""

    def handler(signum: int, frame: object) -> None:
        raise Alarm()

    old = signal.signal(signal.SIGALRM, handler)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def alive(mark: str, settle: float = 2.0) -> int:
    """How many processes run `sleep MARK` (a sandbox's command), once that number is 0 or
    `settle` seconds have passed."""
    deadline = time.monotonic() + settle
    while True:
        found = 0
        for pid in os.listdir("/proc"):
            if not pid.isdigit() or int(pid) == os.getpid():
                continue
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    if f.read().split(b"\0")[:2] == [b"sleep", mark.encode()]:
                        found += 1
            except OSError:
                pass
        if found == 0 or time.monotonic() > deadline:
            return found
        time.sleep(0.05)
