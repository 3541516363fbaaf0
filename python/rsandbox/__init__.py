"""Rootless Linux sandboxes that feel like :mod:`subprocess`.

>>> import rsandbox
>>> r = rsandbox.run(["echo", "hi"], capture_output=True, text=True, timeout=5)
>>> r.stdout, r.verdict
('hi\\n', 'ok')

Every run goes through user, mount, PID, IPC, UTS, network and cgroup namespaces, a read-only
view of the host, seccomp, Landlock and an empty capability set; ``Result.report`` says what was
enforced and what was skipped and why.
"""

from __future__ import annotations

import json
import os
import signal as _signal
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

from . import _rsandbox

__all__ = [
    "PIPE", "DEVNULL", "Spec", "Result", "Sandbox", "Process", "run", "doctor",
    "SandboxError", "ConfigError", "SetupError", "UnsupportedError", "TimeoutExpired",
    "CalledProcessError",
]
__version__: str = _rsandbox.__version__

PIPE = -1
DEVNULL = -3

# ---------------------------------------------------------------------------------------------
# Errors: one mapping, in `_raise`.


class SandboxError(Exception):
    """Base class of every error this package raises about a sandbox."""

    def __init__(self, message: str, *, kind: str = "", errno: Optional[int] = None,
                 step: Optional[str] = None, remedy: Optional[str] = None,
                 path: Optional[str] = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.errno = errno
        self.step = step
        self.remedy = remedy
        self.path = path


class ConfigError(SandboxError, ValueError):
    """A bad argument or spec value."""


class SetupError(SandboxError):
    """A setup step failed: ``.step`` and ``.errno`` say where; the message names the path."""


class UnsupportedError(SandboxError):
    """The host lacks something the spec requires: ``.feature`` and ``.remedy``."""

    @property
    def feature(self) -> str:
        return str(self).split(" not available", 1)[0]


class SandboxFileNotFoundError(SandboxError, FileNotFoundError):
    """A path the spec names does not exist (a missing rootfs, bind source, executable)."""


class SandboxPermissionError(SandboxError, PermissionError):
    """The command cannot be executed."""


class TimeoutExpired(SandboxError):
    """Like :class:`subprocess.TimeoutExpired`: the command was killed at its timeout."""

    def __init__(self, cmd: Sequence[str], timeout: float, output: Any = None, stderr: Any = None) -> None:
        super().__init__(f"Command {list(cmd)!r} timed out after {timeout} seconds", kind="timeout")
        self.cmd = cmd
        self.timeout = timeout
        self.output = output
        self.stdout = output
        self.stderr = stderr


class CalledProcessError(SandboxError):
    """Like :class:`subprocess.CalledProcessError` (raised by ``run(check=True)``)."""

    def __init__(self, returncode: int, cmd: Sequence[str], output: Any = None, stderr: Any = None) -> None:
        super().__init__(f"Command {list(cmd)!r} returned non-zero exit status {returncode}.", kind="exit-nonzero")
        self.returncode = returncode
        self.cmd = cmd
        self.output = output
        self.stdout = output
        self.stderr = stderr


def _raise(e: Exception) -> "NoReturn":  # type: ignore[name-defined]
    """Maps the native error to this package's classes (the only such mapping)."""
    kind, message, errno, step, remedy, path = e.args
    extra = dict(kind=kind, errno=errno, step=step, remedy=remedy, path=path)
    cls: type = {
        "invalid-spec": ConfigError,
        "unmappable-id": ConfigError,
        "invalid-image": ConfigError,
        "path-not-found": SandboxFileNotFoundError,
        "executable-not-found": SandboxFileNotFoundError,
        "not-executable": SandboxPermissionError,
        "setup": SetupError,
        "unsupported": UnsupportedError,
    }.get(kind, SandboxError)
    raise cls(message, **extra) from None


# ---------------------------------------------------------------------------------------------
# Specs.


def _size(value: Union[int, str, None], name: str) -> Optional[int]:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ConfigError(f"{name}: expected bytes as int or str like '256M', got {type(value).__name__}", kind="invalid-spec")
    if isinstance(value, int):
        n = value
    else:
        units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
        text = value.strip().upper()
        try:
            n = int(text[:-1]) * units[text[-1]] if text and text[-1] in units else int(text)
        except ValueError:
            raise ConfigError(f"{name}: not a size: {value!r}", kind="invalid-spec") from None
    if n <= 0:
        raise ConfigError(f"{name}: must be positive, got {value!r}", kind="invalid-spec")
    return n


class Spec:
    """A reusable sandbox configuration: the library's Spec as a JSON-shaped dict.

    ``Spec(**options)`` takes the isolation options of :func:`run`; ``Spec.from_json`` and
    ``to_json`` round-trip the full format (that of ``rsandbox run --print-spec``).
    """

    def __init__(self, **options: Any) -> None:
        self.data: Dict[str, Any] = json.loads(_rsandbox.default_spec_json())
        self.update(**options)

    @classmethod
    def from_json(cls, text: str) -> "Spec":
        spec = cls.__new__(cls)
        try:
            spec.data = json.loads(_rsandbox.check_spec(text))
        except _rsandbox.NativeError as e:
            _raise(e)
        return spec

    def to_json(self) -> str:
        return json.dumps(self.data, indent=2)

    def copy(self) -> "Spec":
        return Spec.from_json(self.to_json())

    def update(self, *, rootfs: Optional[str] = None, binds: Sequence[Any] = (), tmpfs: Sequence[str] = (),
               overlay: Optional[Sequence[str]] = None, upper: Optional[str] = None, image: Optional[str] = None,
               uid: Optional[int] = None, gid: Optional[int] = None, root: bool = False,
               hostname: Optional[str] = None, network: Optional[str] = None,
               memory: Union[int, str, None] = None, pids: Optional[int] = None, cpus: Optional[float] = None,
               cpu_time: Optional[float] = None, output_limit: Union[int, str, None] = None,
               seccomp: Optional[str] = None, landlock: Optional[bool] = None,
               capabilities: Sequence[str] = (), cgroup_parent: Optional[str] = None,
               limits: Optional[str] = None, timeout: Optional[float] = None) -> "Spec":
        d = self.data
        fs = d["filesystem"]
        if rootfs is not None:
            fs["root"] = {"directory": {"path": os.fspath(rootfs), "writable": False}}
        if overlay is not None or image is not None:
            ov: Dict[str, Any] = {"lowers": [os.fspath(p) for p in (overlay or [])]}
            if image is not None:
                layout, _, tag = os.fspath(image).partition(":")
                ov["image"] = {"layout": layout, "tag": tag or None}
            if upper is not None:
                ov["upper"] = {"persistent": {"path": os.fspath(upper)}}
            fs["root"] = {"overlay": ov}
        for b in binds:
            src, dst, ro = (b + (True,))[:3] if isinstance(b, tuple) else (b, b, True)
            fs["mounts"].append({"type": "bind", "source": os.fspath(src), "destination": os.fspath(dst), "readonly": bool(ro)})
        for t in tmpfs:
            fs["mounts"].append({"type": "tmpfs", "destination": t})
        if root:
            uid = 0 if uid is None else uid
            gid = 0 if gid is None else gid
        for key, value in (("uid", uid), ("gid", gid)):
            if value is not None:
                if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                    raise ConfigError(f"{key}: expected a non-negative int, got {value!r}", kind="invalid-spec")
                d["user"][key] = value
        if hostname is not None:
            d["hostname"] = hostname
        if network is not None:
            if network not in ("none", "host"):
                raise ConfigError(f"network: 'none' or 'host', got {network!r}", kind="invalid-spec")
            d["network"] = network
        lim = d["limits"]
        for key, value in (("memory", _size(memory, "memory")), ("pids", pids), ("cpus", cpus), ("cpu_time", cpu_time)):
            if value is not None:
                if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                    raise ConfigError(f"{key}: expected a positive number, got {value!r}", kind="invalid-spec")
                lim[key] = value
        if limits is not None:
            lim["level"] = limits
        if output_limit is not None:
            d["output_limit"] = _size(output_limit, "output_limit")
        sec = d["security"]
        if seccomp is not None:
            sec["seccomp"] = seccomp if seccomp in ("default", "none") else {"profile": {"path": os.fspath(seccomp)}}
        if landlock is not None:
            sec["landlock"]["want"] = "best-effort" if landlock else "off"
        sec["capabilities"].extend(capabilities)
        if cgroup_parent is not None:
            d["cgroup"]["parent"] = os.fspath(cgroup_parent)
        if timeout is not None:
            d["timeout"] = timeout
        return self


# ---------------------------------------------------------------------------------------------
# Results and processes.


@dataclass
class Result:
    """What a finished sandbox reports (``subprocess.CompletedProcess`` plus the rest)."""

    args: List[str]
    returncode: int
    stdout: Any
    stderr: Any
    signal: Optional[int]
    verdict: str
    wall_time: float
    cpu_time: float
    memory_peak: int
    oom_killed: bool
    timed_out: bool
    truncated: bool
    report: Dict[str, Any] = field(repr=False)

    def check_returncode(self) -> None:
        if self.returncode != 0:
            raise CalledProcessError(self.returncode, self.args, self.stdout, self.stderr)


def _result(args: List[str], outcome: Any, text: bool) -> Result:
    raw, out, err = outcome
    r = json.loads(raw)
    status = r["status"]
    sig = status.get("signaled")
    code = status["exited"] if "exited" in status else -sig
    dec = (lambda b: None if b is None else b.decode("utf-8", "replace")) if text else (lambda b: b)
    u = r["usage"]
    return Result(args=args, returncode=code, stdout=dec(out), stderr=dec(err), signal=sig,
                  verdict=r["verdict"], wall_time=u["wall_time"], cpu_time=u["cpu_time"],
                  memory_peak=u["memory_peak"], oom_killed=u["oom_kills"] > 0,
                  timed_out=r["timed_out"], truncated=r["stdout_truncated"] or r["stderr_truncated"],
                  report=r["report"])


def _stream(value: Any, default: str) -> Any:
    if value is None:
        return default
    if value == PIPE:
        return "pipe"
    if value == DEVNULL:
        return "null"
    if isinstance(value, int):
        return {"fd": value}
    if hasattr(value, "fileno"):
        return {"fd": value.fileno()}
    raise ConfigError(f"unsupported stream {value!r}", kind="invalid-spec")


def _argv(args: Any) -> List[str]:
    if isinstance(args, (str, bytes)) or not isinstance(args, Sequence) or not args:
        raise ConfigError("args must be a non-empty sequence of strings", kind="invalid-spec")
    out = []
    for a in args:
        if not isinstance(a, (str, os.PathLike)):
            raise ConfigError(f"args: expected str, got {type(a).__name__}", kind="invalid-spec")
        out.append(os.fspath(a))
    return out


def _prepare(spec: Spec, args: Any, env: Optional[Mapping[str, str]], cwd: Optional[str],
             stdin: Any, stdout: Any, stderr: Any) -> str:
    d = json.loads(spec.to_json())
    p = d["process"]
    p["args"] = _argv(args)
    if env is not None:
        p["env"].update({str(k): str(v) for k, v in env.items()})
    if cwd is not None:
        p["cwd"] = os.fspath(cwd)
    p["stdin"], p["stdout"], p["stderr"] = _stream(stdin, "inherit"), _stream(stdout, "inherit"), _stream(stderr, "inherit")
    return json.dumps(d)


class Process:
    """A running sandbox, like :class:`subprocess.Popen`. A context manager: on exit it is
    killed (if still running) and reaped."""

    def __init__(self, native: Any, args: List[str], text: bool) -> None:
        self._native = native
        self.args = args
        self._text = text
        self.returncode: Optional[int] = None
        self.result: Optional[Result] = None
        mode = "" if text else "b"
        self.stdin = self._file(0, "w" + mode)
        self.stdout = self._file(1, "r" + mode)
        self.stderr = self._file(2, "r" + mode)

    def _file(self, stream: int, mode: str) -> Any:
        fd = self._native.stream_fd(stream)
        return None if fd is None else os.fdopen(os.dup(fd), mode)

    @property
    def pid(self) -> int:
        return self._native.pid

    def _done(self, outcome: Any) -> Result:
        self.result = _result(self.args, outcome, self._text)
        self.returncode = self.result.returncode
        return self.result

    def poll(self) -> Optional[int]:
        if self.returncode is None:
            outcome = self._call(self._native.wait, 0)
            if outcome is not None:
                self._done(outcome)
        return self.returncode

    def wait(self, timeout: Optional[float] = None) -> int:
        if self.returncode is None:
            outcome = self._call(self._native.wait, timeout)
            if outcome is None:
                raise TimeoutExpired(self.args, timeout or 0)
            self._done(outcome)
        return self.returncode  # type: ignore[return-value]

    def communicate(self, input: Any = None, timeout: Optional[float] = None) -> Any:
        if isinstance(input, str):
            input = input.encode()
        for f in (self.stdin, self.stdout, self.stderr):
            if f is not None:
                f.close()
        self.stdin = self.stdout = self.stderr = None
        r = self._done(self._call(self._native.communicate, input, None))
        return r.stdout, r.stderr

    def send_signal(self, sig: int) -> None:
        self._call(self._native.kill, sig)

    def terminate(self) -> None:
        self.send_signal(_signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(_signal.SIGKILL)

    def freeze(self) -> None:
        self._call(self._native.freeze, True)

    def thaw(self) -> None:
        self._call(self._native.freeze, False)

    @staticmethod
    def _call(f: Any, *a: Any) -> Any:
        try:
            return f(*a)
        except _rsandbox.NativeError as e:
            _raise(e)

    def __enter__(self) -> "Process":
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.returncode is None:
            self.kill()
            self.wait()
        for f in (self.stdin, self.stdout, self.stderr):
            if f is not None:
                f.close()


class Sandbox:
    """A reusable configuration that spawns processes: ``Sandbox(spec).spawn(args, ...)``."""

    def __init__(self, spec: Optional[Spec] = None, **options: Any) -> None:
        self.spec = spec.copy() if spec is not None else Spec()
        self.spec.update(**options)

    def spawn(self, args: Sequence[str], *, stdin: Any = None, stdout: Any = None, stderr: Any = None,
              env: Optional[Mapping[str, str]] = None, cwd: Optional[str] = None, text: bool = False) -> Process:
        argv = _argv(args)
        spec_json = _prepare(self.spec, argv, env, cwd, stdin, stdout, stderr)
        return Process(Process._call(_rsandbox.spawn, spec_json), argv, text)


def run(args: Sequence[str], *, input: Any = None, capture_output: bool = False, stdout: Any = None,
        stderr: Any = None, timeout: Optional[float] = None, check: bool = False,
        env: Optional[Mapping[str, str]] = None, cwd: Optional[str] = None, text: bool = False,
        spec: Optional[Spec] = None, **options: Any) -> Result:
    """Runs ``args`` in a sandbox and waits, like :func:`subprocess.run`; isolation options are
    those of :class:`Spec`. Raises :class:`TimeoutExpired` when ``timeout`` kills it and
    :class:`CalledProcessError` with ``check=True`` on a non-zero status."""
    if capture_output:
        if stdout is not None or stderr is not None:
            raise ConfigError("stdout and stderr arguments may not be used with capture_output", kind="invalid-spec")
        stdout = stderr = PIPE
    if timeout is not None:
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
            raise ConfigError(f"timeout: expected a positive number, got {timeout!r}", kind="invalid-spec")
        options["timeout"] = timeout
    s = spec.copy() if spec is not None else Spec()
    s.update(**options)
    argv = _argv(args)
    if isinstance(input, str):
        input = input.encode()
    stdin = PIPE if input is not None else DEVNULL
    spec_json = _prepare(s, argv, env, cwd, stdin, stdout, stderr)
    r = _result(argv, Process._call(_rsandbox.run, spec_json, input), text)
    if r.timed_out:
        raise TimeoutExpired(argv, timeout or 0, r.stdout, r.stderr)
    if check:
        r.check_returncode()
    return r


def doctor() -> Dict[str, Any]:
    """What this host and user can use, with a remedy for each missing feature."""
    return json.loads(_rsandbox.doctor_json())
