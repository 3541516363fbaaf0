"""Rootless Linux sandboxes that feel like :mod:`subprocess`.

>>> import rsandbox
>>> r = rsandbox.run(["echo", "hi"], capture_output=True, text=True, timeout=5)
>>> r.stdout, r.verdict
('hi\\n', 'ok')

Every run goes through user, mount, PID, IPC, UTS, network and cgroup namespaces, a read-only
view of the host, seccomp, Landlock and an empty capability set; ``Result.report`` says what was
enforced and what was skipped and why.

- :func:`run` runs a command to completion (like :func:`subprocess.run`) and returns a
  :class:`Result`: return code, signal, verdict, wall and CPU time, memory peak, OOM kills,
  truncation and the enforcement report.
- :class:`Sandbox` spawns :class:`Process` objects (like :class:`subprocess.Popen`).
- :class:`Pool` keeps sandboxes started ahead of their jobs: a pooled ``run`` costs about one
  ``execve``, with the protections of a cold start and a fresh sandbox for every job.
- :class:`Spec` builds and reuses a configuration; :func:`doctor` says what this host can do.
- Errors: :class:`SandboxError` and its subclasses; missing paths are also
  :class:`FileNotFoundError`, bad arguments also :class:`ValueError`.
"""

from ._errors import (
    CalledProcessError,
    ConfigError,
    SandboxError,
    SandboxFileNotFoundError,
    SandboxPermissionError,
    SetupError,
    TimeoutExpired,
    UnsupportedError,
)
from ._process import DEVNULL, PIPE, STDOUT, Pool, Process, Result, Sandbox, doctor, run
from ._rsandbox import __version__
from ._spec import Spec

__all__ = [
    "PIPE", "DEVNULL", "STDOUT", "Spec", "Result", "Sandbox", "Process", "Pool", "run", "doctor",
    "SandboxError", "ConfigError", "SetupError", "UnsupportedError", "SandboxFileNotFoundError",
    "SandboxPermissionError", "TimeoutExpired", "CalledProcessError", "__version__",
]
