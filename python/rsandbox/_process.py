"""Running sandboxes: `run`, `Sandbox`, `Process` and `Result`."""

from __future__ import annotations

import codecs
import io
import json
import os
import selectors
import signal as _signal
import time
from dataclasses import dataclass, field
from typing import (TYPE_CHECKING, IO, Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple,
                    TypeVar, Union)

from . import _rsandbox
from ._errors import CalledProcessError, SandboxError, TimeoutExpired, config_error, raise_native
from ._spec import PathArg, Spec

__all__ = ["PIPE", "DEVNULL", "STDOUT", "Result", "Process", "Sandbox", "Pool", "run", "doctor"]

#: Like :data:`subprocess.PIPE`: a pipe to or from the caller.
PIPE = -1
#: Like :data:`subprocess.STDOUT`: stderr goes where stdout goes.
STDOUT = -2
#: Like :data:`subprocess.DEVNULL`: /dev/null.
DEVNULL = -3

_T = TypeVar("_T")


def _call(f: Callable[..., _T], *args: Any) -> _T:
    """Calls into the native module, mapping its error to this package's classes."""
    try:
        return f(*args)
    except _rsandbox.NativeError as e:
        raise_native(e)


@dataclass
class Result:
    """A finished sandbox: :class:`subprocess.CompletedProcess` plus what a grader needs.

    ``returncode`` is the exit status, or ``-N`` when signal N killed the command (``signal`` is
    then N). ``verdict`` is one of ``ok``, ``exit-nonzero``, ``signaled``, ``wall-timeout``,
    ``cpu-timeout``, ``memory-limit``, ``output-limit``. Times are seconds; ``memory_peak`` is
    bytes (the cgroup's memory.peak when the sandbox had a cgroup, else the peak RSS; ``usage``
    says which). ``truncated``: output went past ``output_limit`` and the rest was dropped;
    ``stdout_truncated`` and ``stderr_truncated`` say which stream. ``report`` is the enforcement report: every feature asked for, enforced or skipped and why.
    """

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
    usage: Dict[str, Any] = field(repr=False)
    stdout_truncated: bool = field(default=False, repr=False)
    stderr_truncated: bool = field(default=False, repr=False)
    # Set on first use, from ``_report_json`` (see __getattr__): most callers never read it.
    report: Dict[str, Any] = field(init=False, repr=False)
    # The report as the native module gives it.
    _report_json: str = field(default="{}", repr=False, compare=False)

    if not TYPE_CHECKING:
        def __getattr__(self, name: str) -> Any:
            # Only reached while ``report`` is not set yet.
            if name == "report":
                self.report = json.loads(self.__dict__.get("_report_json", "{}"))
                return self.report
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def check_returncode(self) -> None:
        """Raises :class:`CalledProcessError` when ``returncode`` is not 0."""
        if self.returncode != 0:
            raise CalledProcessError(self.returncode, self.args, self.stdout, self.stderr)


#: Decodes a captured stream: (bytes, cut by the output limit, the command was stopped).
_Decode = Callable[[Optional[bytes], bool, bool], Any]


def _stopped(verdict: str) -> bool:
    """Whether a run with this verdict was ended from outside (a kill, a limit) rather than by
    the command itself: its output may stop inside a character."""
    return verdict not in ("ok", "exit-nonzero")


def _result(args: List[str], raw: str, report: str, out: Optional[bytes], err: Optional[bytes],
            decode: _Decode) -> Result:
    r = json.loads(raw)
    status = r["status"]
    sig = status.get("signaled")
    code = status["exited"] if "exited" in status else -sig
    u = r["usage"]
    stopped = _stopped(r["verdict"])
    stdout = decode(out, r["stdout_truncated"], stopped)
    stderr = decode(err, r["stderr_truncated"], stopped)
    return Result(args=args, returncode=code, stdout=stdout, stderr=stderr, signal=sig,
                  verdict=r["verdict"], wall_time=u["wall_time"], cpu_time=u["cpu_time"],
                  memory_peak=u["memory_peak"], oom_killed=u["oom_kills"] > 0,
                  timed_out=r["timed_out"], truncated=r["stdout_truncated"] or r["stderr_truncated"],
                  usage=u, stdout_truncated=r["stdout_truncated"],
                  stderr_truncated=r["stderr_truncated"], _report_json=report)


def _decoder(text: bool, encoding: Optional[str], errors: Optional[str]) -> _Decode:
    """Decodes a captured stream (bytes as they are without text mode). `cut`: the output limit
    cut it, and a character split by the cut is left out. `stopped`: a kill or a limit ended the
    command (or it is still running), so the output may end inside a character: that incomplete
    last sequence is decoded with errors="replace" (or the caller's handler when it is not
    "strict"). Either way the result is not lost to a UnicodeDecodeError; invalid bytes before
    the end fail as with subprocess."""
    if not (text or encoding or errors):
        return lambda b, cut, stopped: b
    enc, errs = encoding or "utf-8", errors or "strict"

    def decode(b: Optional[bytes], cut: bool, stopped: bool) -> Optional[str]:
        if b is None:
            return None
        if not (cut or stopped):
            return b.decode(enc, errs)
        decoder = codecs.getincrementaldecoder(enc)(errs)
        head = decoder.decode(b, final=False)
        if cut:
            return head
        decoder.errors = errs if errs != "strict" else "replace"
        return head + decoder.decode(b"", final=True)
    return decode


def _check_text(encoding: Any, errors: Any) -> None:
    """Refuses, before anything starts, an ``encoding`` or ``errors`` the decoding would fail
    on (TypeError or LookupError, as :mod:`codecs` raises them)."""
    if encoding is not None:
        # Also refuses a codec that is not a text encoding (base64, ...), as TextIOWrapper does.
        "".encode(encoding)
    if errors is not None:
        codecs.lookup_error(errors)


def _stream(value: Any, name: str) -> Any:
    """The spec's form of a stdin/stdout/stderr argument."""
    if value is None:
        return "inherit"
    if isinstance(value, bool):
        raise config_error(f"{name}: unsupported value {value!r}")
    if value == PIPE:
        return "pipe"
    if value == DEVNULL:
        return "null"
    if value == STDOUT:
        if name != "stderr":
            raise config_error(f"{name}: STDOUT is only for stderr")
        return "stdout"
    if isinstance(value, int):
        if value < 0:
            raise config_error(f"{name}: not a file descriptor: {value}")
        return {"fd": value}
    if hasattr(value, "fileno"):
        try:
            return {"fd": value.fileno()}
        except (OSError, ValueError, io.UnsupportedOperation) as e:
            raise config_error(f"{name}: {value!r} has no file descriptor ({e})") from None
    raise config_error(f"{name}: expected None, PIPE, DEVNULL, a file descriptor or a file, got {value!r}")


def _argv(args: Any) -> List[str]:
    if isinstance(args, (str, bytes)) or not isinstance(args, Sequence) or not args:
        raise config_error("args: expected a non-empty sequence of str (no shell parsing is done)")
    out = []
    for a in args:
        if not isinstance(a, (str, os.PathLike)):
            raise config_error(f"args: expected str, got {type(a).__name__}")
        s = os.fspath(a)
        if not isinstance(s, str):
            raise config_error("args: expected str, got bytes")
        if "\0" in s:
            raise config_error(f"args: NUL byte in {s!r}")
        try:
            s.encode("utf-8")
        except UnicodeEncodeError:
            # os.fsdecode's surrogates stand for bytes that are not UTF-8.
            raise config_error(f"args: {s!r} is not UTF-8 text (arguments are passed as UTF-8)") from None
        out.append(s)
    return out


def _spec_json(spec: Spec, argv: List[str], env: Optional[Mapping[str, str]], cwd: Optional[PathArg],
               stdin: Any, stdout: Any, stderr: Any) -> str:
    d = json.loads(json.dumps(spec.data))
    p = d["process"]
    p["args"] = argv
    p["env"].update(_env(env) or {})
    c = _cwd(cwd)
    if c is not None:
        p["cwd"] = c
    p["stdin"], p["stdout"], p["stderr"] = (_stream(stdin, "stdin"), _stream(stdout, "stdout"),
                                             _stream(stderr, "stderr"))
    return json.dumps(d)


def _env(env: Optional[Mapping[str, str]]) -> Optional[Dict[str, str]]:
    """The variables a caller adds, checked."""
    if env is None:
        return None
    if not isinstance(env, Mapping):
        raise config_error(f"env: expected a mapping, got {type(env).__name__}")
    out = {}
    for k, v in env.items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise config_error(f"env: expected str -> str, got {k!r}: {v!r}")
        if not k or "=" in k or "\0" in k or "\0" in v:
            raise config_error(f"env: unusable variable {k!r}")
        out[k] = v
    return out


def _cwd(cwd: Optional[PathArg]) -> Optional[str]:
    """The working directory a caller asks for, checked."""
    if cwd is None:
        return None
    c = os.fspath(cwd)
    if not isinstance(c, str) or "\0" in c or not c:
        raise config_error(f"cwd: not a usable path: {c!r}")
    return c


def _streams_json(stdin: Any, stdout: Any, stderr: Any) -> str:
    """stdin, stdout and stderr in the spec's form, as a JSON list."""
    return json.dumps([_stream(stdin, "stdin"), _stream(stdout, "stdout"), _stream(stderr, "stderr")])


def _timeout(value: Any, name: str = "timeout") -> Optional[float]:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        raise config_error(f"{name}: expected a non-negative number of seconds, got {value!r}")
    try:
        return float(value)
    except OverflowError:
        raise config_error(f"{name}: {value!r} seconds is too large") from None


class Process:
    """A running sandbox, like :class:`subprocess.Popen`; made by :meth:`Sandbox.spawn`.

    ``stdin``, ``stdout``, ``stderr`` are file objects for the streams spawned with ``PIPE``
    (else None). ``returncode`` is None while it runs; ``result`` holds the :class:`Result`
    once it has been waited for. As a context manager it closes the pipes, kills the sandbox if
    it still runs, and reaps it.
    """

    stdin: Optional[IO[Any]]
    stdout: Optional[IO[Any]]
    stderr: Optional[IO[Any]]
    returncode: Optional[int]
    result: Optional[Result]

    def __init__(self, native: "_rsandbox.NativeProcess", args: List[str], output_limit: Optional[int],
                 text: bool = False, encoding: Optional[str] = None, errors: Optional[str] = None) -> None:
        self._native = native
        self.args = args
        self.returncode = None
        self.result = None
        self._limit = output_limit
        self._decode = _decoder(text, encoding, errors)
        self._text = bool(text or encoding or errors)
        self._encoding, self._errors = encoding or "utf-8", errors or "strict"
        self._chunks: Dict[int, List[bytes]] = {}
        self._sizes: Dict[int, int] = {}
        self._truncated = False
        self._cut: Dict[int, bool] = {}
        self._input: Optional[memoryview] = None
        self._streams: Dict[int, int] = {}
        self._started = False
        self.stdin = self._file(0, "wb")
        self.stdout = self._file(1, "rb")
        self.stderr = self._file(2, "rb")

    def _file(self, stream: int, mode: str) -> Optional[IO[Any]]:
        fd = self._native.take_stream(stream)
        if fd is None:
            return None
        f = os.fdopen(fd, mode)
        if self._text:
            return io.TextIOWrapper(f, encoding=self._encoding, errors=self._errors,
                                    write_through=mode == "wb", line_buffering=mode == "wb")
        return f

    @property
    def pid(self) -> int:
        """Host pid of the sandbox's init process."""
        return self._native.pid

    @property
    def report(self) -> Dict[str, Any]:
        """The enforcement report (known from the moment the sandbox started)."""
        report: Dict[str, Any] = json.loads(self._native.report_json())
        return report

    def _done(self, outcome: Tuple[str, str, Optional[bytes], Optional[bytes]]) -> None:
        raw, report, _, _ = outcome
        self.result = _result(self.args, raw, report, None, None, self._decode)
        self.returncode = self.result.returncode

    def poll(self) -> Optional[int]:
        """The return code if the sandbox has exited (reaping it), else None."""
        if self.returncode is None:
            outcome = _call(self._native.wait, 0.0)
            if outcome is not None:
                self._done(outcome)
        return self.returncode

    def wait(self, timeout: Optional[float] = None) -> int:
        """Waits for the sandbox to exit and returns the return code; raises
        :class:`TimeoutExpired` after ``timeout`` seconds (the sandbox keeps running). Ctrl-C
        while waiting kills and reaps the sandbox (``returncode`` and ``result`` are set) and
        raises KeyboardInterrupt."""
        limit = _timeout(timeout)
        if self.returncode is None:
            try:
                outcome = _call(self._native.wait, limit)
            except BaseException:
                # Ctrl-C: the sandbox has been killed and reaped, its result kept.
                self._settle()
                raise
            if outcome is None:
                raise TimeoutExpired(self.args, limit or 0.0)
            self._done(outcome)
        assert self.returncode is not None
        return self.returncode

    def _settle(self) -> None:
        """Takes the result of a sandbox that has been reaped, if it has (after an exception)."""
        try:
            self.poll()
        except BaseException:
            pass

    def communicate(self, input: Any = None, timeout: Optional[float] = None) -> Tuple[Any, Any]:
        """Like :meth:`subprocess.Popen.communicate`: sends ``input``, reads stdout and stderr to
        the end and waits. On :class:`TimeoutExpired` the sandbox keeps running and nothing read
        is lost: call again to go on. Output past the spec's ``output_limit`` is dropped (the
        command is not blocked) and ``result.truncated`` is set. Any other exception while it
        waits (Ctrl-C) kills and reaps the sandbox before it is raised."""
        limit = _timeout(timeout)
        deadline = None if limit is None else time.monotonic() + limit
        if self._started and input is not None:
            raise ValueError("Cannot send input after starting communication")
        if not self._started:
            self._start(input)
        try:
            self._exchange(limit, deadline)
        except TimeoutExpired:
            raise
        except BaseException:
            # The sandbox does not outlive an interrupted communicate().
            self._end()
            raise
        r = self.result
        assert r is not None
        out, err = self._collected(_stopped(r.verdict))
        r.stdout, r.stderr = out, err
        if self._truncated:
            r.truncated = True
            r.stdout_truncated = r.stdout_truncated or self._cut.get(1, False)
            r.stderr_truncated = r.stderr_truncated or self._cut.get(2, False)
            if r.verdict == "ok":
                r.verdict = "output-limit"
        return out, err

    def _exchange(self, limit: Optional[float], deadline: Optional[float]) -> None:
        """communicate()'s transfer and wait."""
        with selectors.DefaultSelector() as sel:
            if self.stdin is not None and not self.stdin.closed and self._input:
                sel.register(self.stdin.fileno(), selectors.EVENT_WRITE)
            self._streams = {}
            for stream, f in ((1, self.stdout), (2, self.stderr)):
                if f is not None and not f.closed:
                    sel.register(f.fileno(), selectors.EVENT_READ)
                    self._streams[f.fileno()] = stream
            while sel.get_map():
                wait_for = 0.1
                if deadline is not None:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise TimeoutExpired(self.args, limit or 0.0, *self._collected(True))
                    wait_for = min(wait_for, left)
                ready = sel.select(wait_for)
                # Keep the spec's wall-clock and CPU-time limits enforced while reading.
                self.poll()
                for key, _ in ready:
                    self._transfer(sel, key.fd)
        self._close_streams()
        rest = None if deadline is None else max(0.0, deadline - time.monotonic())
        try:
            self.wait(rest)
        except TimeoutExpired:
            raise TimeoutExpired(self.args, limit or 0.0, *self._collected(True)) from None

    def _end(self) -> None:
        """Kills the sandbox if it runs, and reaps it (on the way out of an exception)."""
        if self.returncode is None:
            try:
                self.kill()
                self.wait()
            except SandboxError:
                pass

    def _start(self, input: Any) -> None:
        self._started = True
        if isinstance(input, str):
            input = input.encode(self._encoding, self._errors)
        if input is not None and not isinstance(input, (bytes, bytearray, memoryview)):
            raise config_error(f"input: expected bytes or str, got {type(input).__name__}")
        if input and self.stdin is None:
            raise ValueError("input given but stdin is not a pipe (spawn with stdin=PIPE)")
        for stream, f in ((1, self.stdout), (2, self.stderr)):
            if f is not None:
                self._chunks[stream] = []
                self._sizes[stream] = 0
        if self.stdin is not None:
            try:
                self.stdin.flush()
            except BrokenPipeError:
                pass
            if input:
                self._input = memoryview(bytes(input))
                os.set_blocking(self.stdin.fileno(), False)
            else:
                self._close(self.stdin)
                self.stdin = None

    def _transfer(self, sel: selectors.BaseSelector, fd: int) -> None:
        if self.stdin is not None and fd == self.stdin.fileno():
            assert self._input is not None
            try:
                n = os.write(fd, self._input[:65536])
                self._input = self._input[n:]
            except BlockingIOError:
                return
            except BrokenPipeError:
                # The command stopped reading; the rest of the input is dropped, as with a shell pipe.
                self._input = memoryview(b"")
            if not self._input:
                sel.unregister(fd)
                self._close(self.stdin)
                self.stdin = None
            return
        stream = self._streams[fd]
        data = os.read(fd, 65536)
        if not data:
            sel.unregister(fd)
            if stream == 1 and self.stdout is not None:
                self._close(self.stdout)
                self.stdout = None
            elif stream == 2 and self.stderr is not None:
                self._close(self.stderr)
                self.stderr = None
            return
        room = len(data) if self._limit is None else max(0, self._limit - self._sizes[stream])
        if room < len(data):
            self._truncated = self._cut[stream] = True
            data = data[:room]
        if data:
            self._chunks[stream].append(data)
            self._sizes[stream] += len(data)

    def _collected(self, stopped: bool) -> Tuple[Any, Any]:
        """The output read so far, decoded; `stopped`: the command did not end of itself (it
        was killed or is still running), so the output may end inside a character."""
        joined = [b"".join(self._chunks[s]) if s in self._chunks else None for s in (1, 2)]
        return (self._decode(joined[0], self._cut.get(1, False), stopped),
                self._decode(joined[1], self._cut.get(2, False), stopped))

    @staticmethod
    def _close(f: IO[Any]) -> None:
        try:
            f.close()
        except OSError:
            pass

    def _close_streams(self) -> None:
        for f in (self.stdin, self.stdout, self.stderr):
            if f is not None:
                self._close(f)

    def send_signal(self, sig: int) -> None:
        """Sends ``sig`` to every process in the sandbox (nothing once it has been reaped)."""
        if isinstance(sig, bool) or not isinstance(sig, int) or not 0 < sig < 65:
            raise config_error(f"send_signal: not a signal number: {sig!r}")
        if self.returncode is None:
            _call(self._native.kill, int(sig))

    def terminate(self) -> None:
        """SIGTERM to every process in the sandbox."""
        self.send_signal(_signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL to every process in the sandbox."""
        self.send_signal(_signal.SIGKILL)

    def freeze(self) -> None:
        """Stops every process in the sandbox (cgroup freezer; needs the sandbox's own cgroup)."""
        _call(self._native.freeze, True)

    def thaw(self) -> None:
        """Resumes a frozen sandbox."""
        _call(self._native.freeze, False)

    def __enter__(self) -> "Process":
        return self

    def __exit__(self, *exc: Any) -> None:
        self._close_streams()
        if self.returncode is None:
            self.kill()
            self.wait()

    def __repr__(self) -> str:
        return f"<rsandbox.Process pid={self.pid} returncode={self.returncode} args={self.args!r}>"


class Sandbox:
    """A configuration that spawns sandboxes: ``Sandbox(spec, **options).spawn(args, ...)``.
    Options are those of :class:`Spec`, applied over a copy of ``spec``."""

    spec: Spec

    def __init__(self, spec: Optional[Spec] = None, **options: Any) -> None:
        if spec is not None and not isinstance(spec, Spec):
            raise config_error(f"spec: expected rsandbox.Spec, got {type(spec).__name__}")
        self.spec = spec.copy() if spec is not None else Spec()
        self.spec.update(**options)

    def spawn(self, args: Sequence[PathArg], *, stdin: Any = None, stdout: Any = None, stderr: Any = None,
              env: Optional[Mapping[str, str]] = None, cwd: Optional[PathArg] = None, text: bool = False,
              encoding: Optional[str] = None, errors: Optional[str] = None) -> Process:
        """Starts ``args`` in a new sandbox and returns at once; streams as for
        :class:`subprocess.Popen` (``PIPE``, ``DEVNULL``, ``STDOUT``, a descriptor or a file;
        None inherits the caller's)."""
        argv = _argv(args)
        _check_text(encoding, errors)
        spec_json = _spec_json(self.spec, argv, env, cwd, stdin, stdout, stderr)
        native = _call(_rsandbox.spawn, spec_json)
        return Process(native, argv, self.spec.data.get("output_limit"), text, encoding, errors)

    def run(self, args: Sequence[PathArg], **kwargs: Any) -> Result:
        """:func:`rsandbox.run` with this sandbox's spec."""
        return run(args, spec=self.spec, **kwargs)


class Pool:
    """Sandboxes of one configuration started ahead of their jobs: ``Pool(size, spec,
    **options)``. Each job runs in a sandbox of its own that nobody used before (no state passes
    from one job to the next) with the protections of a cold start; a job costs about one
    ``execve``. The pool starts replacements in the background. ``Result.report`` has a ``pool``
    entry saying whether the job's sandbox came ready from the pool.

    Use it as a context manager or call :meth:`close`; jobs take ``run``'s arguments (the
    isolation options are the pool's).
    """

    def __init__(self, size: int = 4, spec: Optional[Spec] = None, **options: Any) -> None:
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise config_error(f"size: expected a positive int, got {size!r}")
        if spec is not None and not isinstance(spec, Spec):
            raise config_error(f"spec: expected rsandbox.Spec, got {type(spec).__name__}")
        self.spec = spec.copy() if spec is not None else Spec()
        self.spec.update(**options)
        self._native: Optional[_rsandbox.NativePool] = _call(_rsandbox.NativePool, self.spec.to_json(), size)
        self._timeout: Optional[float] = self.spec.data.get("timeout")

    def _pool(self) -> "_rsandbox.NativePool":
        if self._native is None:
            raise ValueError("the pool is closed")
        return self._native

    @property
    def ready(self) -> int:
        """Sandboxes ready now."""
        return self._pool().ready()

    def wait_full(self, timeout: float = 30.0) -> bool:
        """Waits until every sandbox of the pool is ready; False after ``timeout`` seconds.
        Ctrl-C interrupts it. A job counts as running until its result has been taken (``run``
        returned, or its :class:`Process` waited for): the pool does not start replacements
        while jobs run unless it is empty, so a finished job never waited for keeps it from
        being full."""
        return self._pool().wait_full(float(timeout))

    def run(self, args: Sequence[PathArg], *, stdin: Any = None, input: Any = None,
            capture_output: bool = False, stdout: Any = None, stderr: Any = None,
            timeout: Optional[float] = None, check: bool = False,
            env: Optional[Mapping[str, str]] = None, cwd: Optional[PathArg] = None,
            text: bool = False, encoding: Optional[str] = None,
            errors: Optional[str] = None) -> Result:
        """:func:`run` in a pooled sandbox: the same arguments but the isolation options."""
        argv, data, streams, limit = _run_args(args, stdin, input, capture_output, stdout, stderr,
                                               timeout, encoding, errors)
        if limit is None:
            limit = self._timeout
        raw, report, out, err = _call(self._pool().run, argv, _env(env), _cwd(cwd),
                                      _streams_json(*streams), data, limit)
        return _finish(argv, raw, report, out, err, text, encoding, errors, limit, check)

    def spawn(self, args: Sequence[PathArg], *, stdin: Any = None, stdout: Any = None,
              stderr: Any = None, env: Optional[Mapping[str, str]] = None,
              cwd: Optional[PathArg] = None, text: bool = False, encoding: Optional[str] = None,
              errors: Optional[str] = None, timeout: Optional[float] = None) -> Process:
        """:meth:`Sandbox.spawn` in a pooled sandbox; ``timeout`` is the job's wall-clock limit."""
        argv = _argv(args)
        _check_text(encoding, errors)
        limit = _timeout(timeout)
        native = _call(self._pool().spawn, argv, _env(env), _cwd(cwd),
                       _streams_json(stdin, stdout, stderr),
                       limit if limit is not None else self._timeout)
        return Process(native, argv, self.spec.data.get("output_limit"), text, encoding, errors)

    def close(self) -> None:
        """Kills the sandboxes still waiting for a job and stops the refill."""
        self._native = None

    def __enter__(self) -> "Pool":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _run_args(args: Any, stdin: Any, input: Any, capture_output: bool, stdout: Any, stderr: Any,
              timeout: Any, encoding: Optional[str], errors: Optional[str]
              ) -> Tuple[List[str], Optional[bytes], Tuple[Any, Any, Any], Optional[float]]:
    """The checks and defaults :func:`run` and :meth:`Pool.run` share."""
    _check_text(encoding, errors)
    if capture_output:
        if stdout is not None or stderr is not None:
            raise config_error("stdout and stderr arguments may not be used with capture_output")
        stdout = stderr = PIPE
    data: Optional[bytes] = None
    if input is not None:
        if stdin is not None:
            raise config_error("stdin and input arguments may not both be used")
        if isinstance(input, str):
            input = input.encode(encoding or "utf-8", errors or "strict")
        if not isinstance(input, (bytes, bytearray, memoryview)):
            raise config_error(f"input: expected bytes or str, got {type(input).__name__}")
        data = bytes(input)
        stdin = PIPE
    elif stdin is None:
        stdin = DEVNULL
    elif stdin == PIPE:
        raise config_error("stdin=PIPE needs input= (or use Sandbox.spawn)")
    limit = _timeout(timeout)
    if limit is not None and limit <= 0:
        raise config_error(f"timeout: must be positive, got {timeout!r}")
    # As with subprocess, output not asked for goes where the caller's own goes.
    if stdout is None:
        stdout = 1
    if stderr is None:
        stderr = 2
    return _argv(args), data, (stdin, stdout, stderr), limit


def _finish(argv: List[str], raw: str, report: str, out: Optional[bytes], err: Optional[bytes],
            text: bool, encoding: Optional[str], errors: Optional[str], limit: Optional[float],
            check: bool) -> Result:
    r = _result(argv, raw, report, out, err, _decoder(text, encoding, errors))
    if r.timed_out:
        raise TimeoutExpired(argv, limit or 0.0, r.stdout, r.stderr, r)
    if check:
        r.check_returncode()
    return r


def run(args: Sequence[PathArg], *, stdin: Any = None, input: Any = None, capture_output: bool = False,
        stdout: Any = None, stderr: Any = None, timeout: Optional[float] = None, check: bool = False,
        env: Optional[Mapping[str, str]] = None, cwd: Optional[PathArg] = None, text: bool = False,
        encoding: Optional[str] = None, errors: Optional[str] = None, spec: Optional[Spec] = None,
        **options: Any) -> Result:
    """Runs ``args`` in a new sandbox and waits, like :func:`subprocess.run`.

    ``options`` are the isolation options of :class:`Spec`, applied over ``spec`` (default: the
    library's defaults). ``timeout`` is a wall-clock limit enforced by the library: the whole
    sandbox is killed and :class:`TimeoutExpired` raised with the output so far. ``check=True``
    raises :class:`CalledProcessError` on a non-zero status. Without ``stdin`` or ``input`` the
    command reads /dev/null. Ctrl-C kills the sandbox and raises KeyboardInterrupt.
    """
    argv, data, streams, limit = _run_args(args, stdin, input, capture_output, stdout, stderr,
                                           timeout, encoding, errors)
    if limit is not None:
        options["timeout"] = limit
    if spec is not None and not isinstance(spec, Spec):
        raise config_error(f"spec: expected rsandbox.Spec, got {type(spec).__name__}")
    s = spec.copy() if spec is not None else Spec()
    s.update(**options)
    spec_json = _spec_json(s, argv, env, cwd, *streams)
    raw, report, out, err = _call(_rsandbox.run, spec_json, data)
    return _finish(argv, raw, report, out, err, text, encoding, errors,
                   limit if limit is not None else s.data["timeout"], check)


def doctor() -> Dict[str, Any]:
    """What this host and user can use: ``{"checks": [{"name", "available", "detail",
    "remedy"}, ...], ...}``, each missing feature with its remedy (None where available)."""
    checks: Dict[str, Any] = json.loads(_rsandbox.doctor_json())
    return checks


