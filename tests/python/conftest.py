"""Shared helpers of the Python tests (run by tests/python/run as root and as the test user)."""

import os
import shutil
from pathlib import Path
from typing import Optional

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
