"""The exception classes, and the one mapping from the native module's error to them."""

from __future__ import annotations

import signal
from typing import Any, Dict, NoReturn, Optional, Sequence, Tuple, Type

from . import _rsandbox

__all__ = [
    "SandboxError", "ConfigError", "SetupError", "UnsupportedError", "SandboxFileNotFoundError",
    "SandboxPermissionError", "TimeoutExpired", "CalledProcessError",
]


class SandboxError(Exception):
    """Base class of every error this package raises about a sandbox.

    ``kind`` is the library's error kind (``"invalid-spec"``, ``"setup"``, ``"unsupported"``, ...);
    ``errno``, ``step``, ``remedy`` and ``path`` are set when the library knows them.
    """

    kind: str
    errno: Optional[int]
    step: Optional[str]
    remedy: Optional[str]
    path: Optional[str]

    def __init__(self, message: str, *, kind: str = "", errno: Optional[int] = None,
                 step: Optional[str] = None, remedy: Optional[str] = None,
                 path: Optional[str] = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.errno = errno
        self.step = step
        self.remedy = remedy
        self.path = path

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""

    def __reduce__(self) -> Tuple[Any, ...]:
        # Pickled as what it is, not as a call of the constructor with ``args`` (the default,
        # which the subclasses' constructors do not take): multiprocessing and
        # concurrent.futures hand exceptions from process to process this way. An OSError
        # keeps errno, strerror and the file names in fields of its own, not in __dict__.
        state = dict(self.__dict__)
        if isinstance(self, OSError):
            for name in ("errno", "strerror", "filename", "filename2"):
                state[name] = getattr(self, name)
        return (_rebuild, (type(self), self.args), state)


def _rebuild(cls: Type[SandboxError], args: Tuple[Any, ...]) -> SandboxError:
    """An exception of class ``cls`` with these ``args`` and nothing else yet (pickle sets the rest)."""
    error = cls.__new__(cls)
    error.args = args
    return error


class ConfigError(SandboxError, ValueError):
    """A bad argument or spec value (also a :class:`ValueError`)."""


class SetupError(SandboxError):
    """A setup step failed: ``.step`` and ``.errno`` say where, ``.path`` what it was working on."""


class UnsupportedError(SandboxError):
    """The host lacks something the spec requires: ``.feature`` names it, ``.remedy`` says how
    to get it."""

    @property
    def feature(self) -> str:
        return str(self).split(" not available", 1)[0]


class SandboxFileNotFoundError(SandboxError, FileNotFoundError):
    """A path the spec names does not exist: a missing rootfs, bind source or executable."""


class SandboxPermissionError(SandboxError, PermissionError):
    """The command exists but cannot be executed."""


class TimeoutExpired(SandboxError):
    """Like :class:`subprocess.TimeoutExpired`: ``timeout`` passed. From :func:`rsandbox.run` and
    ``Pool.run`` the sandbox has been killed; ``output``/``stdout`` and ``stderr`` hold what it
    wrote before, and ``result`` is the whole result (verdict ``wall-timeout``, the usage, the
    report). Where the sandbox keeps running (``Process.wait``), ``result`` is None."""

    def __init__(self, cmd: Sequence[str], timeout: float, output: Any = None, stderr: Any = None,
                 result: Any = None) -> None:
        super().__init__(f"Command '{cmd}' timed out after {timeout} seconds", kind="timeout")
        self.cmd = cmd
        self.timeout = timeout
        self.output = output
        self.stderr = stderr
        self.result = result

    @property
    def stdout(self) -> Any:
        return self.output


class CalledProcessError(SandboxError):
    """Like :class:`subprocess.CalledProcessError`: raised by ``run(check=True)`` and
    ``Result.check_returncode()`` for a non-zero status."""

    def __init__(self, returncode: int, cmd: Sequence[str], output: Any = None, stderr: Any = None) -> None:
        # The wording of subprocess.CalledProcessError.
        if returncode < 0:
            try:
                name = repr(signal.Signals(-returncode))
            except ValueError:
                name = f"unknown signal {-returncode}"
            message = f"Command '{cmd}' died with {name}."
        else:
            message = f"Command '{cmd}' returned non-zero exit status {returncode}."
        super().__init__(message, kind="exit-nonzero")
        self.returncode = returncode
        self.cmd = cmd
        self.output = output
        self.stderr = stderr

    @property
    def stdout(self) -> Any:
        return self.output


_CLASSES: Dict[str, Type[SandboxError]] = {
    "invalid-spec": ConfigError,
    "unmappable-id": ConfigError,
    "invalid-image": ConfigError,
    "path-not-found": SandboxFileNotFoundError,
    "executable-not-found": SandboxFileNotFoundError,
    "not-executable": SandboxPermissionError,
    "setup": SetupError,
    "unsupported": UnsupportedError,
}


def raise_native(e: "_rsandbox.NativeError") -> NoReturn:
    """Raises the exception class of the library's error kind (the only such mapping)."""
    kind, message, errno, step, remedy, path = e.args
    error = _CLASSES.get(kind, SandboxError)(message, kind=kind, errno=errno, step=step,
                                                remedy=remedy, path=path)
    if isinstance(error, OSError):
        error.filename = path
    raise error from None


def config_error(message: str) -> ConfigError:
    return ConfigError(message, kind="invalid-spec")
