"""`Spec`: a sandbox configuration, built from keyword options or the library's JSON format."""

from __future__ import annotations

import json
import os
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from . import _rsandbox
from ._errors import config_error, raise_native

__all__ = ["Spec", "Size", "PathArg", "Bind"]

PathArg = Union[str, "os.PathLike[str]"]
#: Bytes as an int, or a string with a K, M, G or T suffix (``"256M"``).
Size = Union[int, str]
#: A read-only bind: a host path seen at the same place, or ``(host_path, sandbox_path)``.
Bind = Union[PathArg, Tuple[PathArg, PathArg]]

_UNITS = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(value: Any, name: str, *, zero: bool = False) -> int:
    """Bytes from an int or a string like ``"256M"`` (K, M, G, T); positive (or 0 where
    ``zero``), or ConfigError."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise config_error(f"{name}: expected bytes as an int or a str like '256M', got {type(value).__name__}")
    if isinstance(value, int):
        n = value
    else:
        text = value.strip().upper().removesuffix("B")
        try:
            n = int(text[:-1]) * _UNITS[text[-1]] if text and text[-1] in _UNITS else int(text)
        except ValueError:
            raise config_error(f"{name}: not a size: {value!r}") from None
    if n < 0 or (n == 0 and not zero):
        raise config_error(f"{name}: must be {'0 or more' if zero else 'positive'}, got {value!r}")
    if n >= 1 << 64:
        raise config_error(f"{name}: {value!r} is more than 2**64 bytes")
    return n


def _number(value: Any, name: str, *, integer: bool = False) -> Union[int, float]:
    ok = isinstance(value, int) or (not integer and isinstance(value, float))
    if isinstance(value, bool) or not ok:
        kind = "an int" if integer else "a number"
        raise config_error(f"{name}: expected {kind}, got {type(value).__name__}")
    number: Union[int, float] = value
    try:
        finite = float(number) != float("inf")
    except OverflowError:  # an int too large for a float
        finite = False
    if not number > 0 or not finite or (integer and number >= 1 << 64):
        raise config_error(f"{name}: must be positive and finite, got {value!r}")
    return number


def _path(value: Any, name: str) -> str:
    try:
        p: Union[str, bytes] = os.fspath(value)
    except TypeError:
        raise config_error(f"{name}: expected a path, got {type(value).__name__}") from None
    if isinstance(p, bytes):
        raise config_error(f"{name}: expected a str path, got bytes")
    if not p or "\0" in p:
        raise config_error(f"{name}: not a usable path: {p!r}")
    return p


def _paths(values: Any, name: str) -> List[str]:
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) and not hasattr(values, "__iter__"):
        raise config_error(f"{name}: expected a list of paths, got {type(values).__name__}")
    return [_path(v, name) for v in values]


def _strings(values: Any, name: str) -> List[str]:
    if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
        raise config_error(f"{name}: expected a list of str, got {type(values).__name__}")
    out = []
    for v in values:
        if not isinstance(v, str):
            raise config_error(f"{name}: expected str, got {type(v).__name__}")
        out.append(v)
    return out


def _ports(values: Any, name: str) -> List[int]:
    if not hasattr(values, "__iter__") or isinstance(values, (str, bytes)):
        raise config_error(f"{name}: expected a list of ports, got {type(values).__name__}")
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int) or not 0 < v < 65536:
            raise config_error(f"{name}: not a TCP port: {v!r}")
        out.append(v)
    return out


def _choice(value: Any, name: str, choices: Sequence[str]) -> str:
    if value not in choices:
        raise config_error(f"{name}: one of {', '.join(repr(c) for c in choices)}, got {value!r}")
    return str(value)


class Spec:
    """A reusable sandbox configuration: the library's Spec, held as its JSON-shaped dict
    (``data``).

    ``Spec(**options)`` takes the isolation options of :func:`rsandbox.run`;
    :meth:`from_json` and :meth:`to_json` round-trip the full format, which is that of
    ``rsandbox run --print-spec``. Options left out keep the library's defaults: every namespace,
    a read-only view of the host, seccomp, Landlock, no capabilities.

    Filesystem
        ``rootfs`` (a host directory as ``/``, read-only), ``overlay`` (lower directories, top
        first, under a writable upper), ``image`` (a local OCI layout, ``"dir"`` or
        ``"dir:tag"``, as the overlay's bottom layers), ``upper`` (a host directory that keeps
        the changes; without it the upper is a tmpfs of ``upper_size``), ``overlay_driver``
        (``"auto"``, ``"kernel"``, ``"fuse"``), ``binds`` (read-only: ``path`` or ``(host,
        sandbox)``), ``rw_binds`` (writable), ``tmpfs`` (``"/dst"``, ``"/dst:64M"`` or ``("/dst",
        size)``), ``template`` (False: build every default tree in full instead of copying this
        process's template of it from the second sandbox on).
    Identity and namespaces
        ``uid``, ``gid``, ``root`` (uid and gid 0), ``hostname``, ``network`` (``"none"``: only
        loopback, or ``"host"``).
    Limits
        ``memory``, ``memory_swap``, ``output_limit`` (sizes), ``pids``, ``cpus``, ``cpu_weight``,
        ``cpu_time`` (seconds of CPU), ``timeout`` (wall seconds), ``limits`` (``"required"``:
        fail without a delegated cgroup, or ``"best-effort"``: fall back to rlimits and report
        it), ``cgroup_parent``, ``rlimits`` (``{"nofile": 64}``).
    Security
        ``seccomp`` (``"default"``, ``"none"`` or a Docker/OCI JSON profile's path), ``landlock``
        (True: best-effort, ``"required"``, False: off), ``landlock_read``, ``landlock_write``
        (more paths), ``tcp_bind``, ``tcp_connect`` (ports allowed with ``network="host"``),
        ``capabilities`` (names kept, e.g. ``["CAP_NET_RAW"]``), ``allow_nested_userns``,
        ``mask_proc``.
    """

    data: Dict[str, Any]

    def __init__(self, **options: Any) -> None:
        self.data = json.loads(_rsandbox.default_spec_json())
        self.update(**options)

    @classmethod
    def from_json(cls, text: Union[str, bytes]) -> "Spec":
        """A spec from the library's JSON format, checked as :meth:`validate` checks it;
        ConfigError names what is wrong."""
        if isinstance(text, bytes):
            text = text.decode("utf-8", "replace")
        if not isinstance(text, str):
            raise config_error(f"from_json: expected str, got {type(text).__name__}")
        spec = cls.__new__(cls)
        try:
            spec.data = json.loads(_rsandbox.check_spec(text))
        except _rsandbox.NativeError as e:
            raise_native(e)
        return spec

    def to_json(self) -> str:
        """The spec in the library's JSON format (accepted by ``rsandbox run --spec``)."""
        return json.dumps(self.data, indent=2)

    def validate(self) -> "Spec":
        """Checks the spec with the library: its format, and every value a start would refuse
        whatever the host (time limits, limits, host name, mount destinations and sizes,
        environment names, paths that must be absolute). What depends on the host (paths that
        must exist, the kernel's features, cgroup delegation) is checked when a sandbox starts.
        Raises ConfigError; returns self."""
        Spec.from_json(self.to_json())
        return self

    def copy(self) -> "Spec":
        spec = Spec.__new__(Spec)
        spec.data = json.loads(json.dumps(self.data))
        return spec

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Spec) and other.data == self.data

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Spec.from_json({json.dumps(self.data)!r})"

    def update(self, *, rootfs: Optional[PathArg] = None, binds: Sequence[Bind] = (),
               rw_binds: Sequence[Bind] = (), tmpfs: Sequence[Union[str, Tuple[str, Size]]] = (),
               template: Optional[bool] = None,
               overlay: Optional[Sequence[PathArg]] = None, upper: Optional[PathArg] = None,
               upper_size: Optional[Size] = None, overlay_driver: Optional[str] = None,
               image: Optional[PathArg] = None, image_store: Optional[PathArg] = None,
               uid: Optional[int] = None, gid: Optional[int] = None, root: bool = False,
               hostname: Optional[str] = None, network: Optional[str] = None,
               memory: Optional[Size] = None, memory_swap: Optional[Size] = None,
               pids: Optional[int] = None, cpus: Optional[float] = None,
               cpu_weight: Optional[int] = None, cpu_time: Optional[float] = None,
               limits: Optional[str] = None, output_limit: Optional[Size] = None,
               timeout: Optional[float] = None, cgroup_parent: Optional[PathArg] = None,
               rlimits: Optional[Mapping[str, int]] = None, seccomp: Optional[PathArg] = None,
               landlock: Union[bool, str, None] = None, landlock_read: Sequence[PathArg] = (),
               landlock_write: Sequence[PathArg] = (), tcp_bind: Sequence[int] = (),
               tcp_connect: Sequence[int] = (), capabilities: Sequence[str] = (),
               allow_nested_userns: Optional[bool] = None,
               mask_proc: Optional[bool] = None) -> "Spec":
        """Applies options (those of the class docstring) in place; returns self."""
        d = self.data
        fs = d["filesystem"]
        if rootfs is not None and (overlay is not None or image is not None):
            raise config_error("rootfs: a directory root and an overlay/image root exclude each other")
        if rootfs is not None:
            fs["root"] = {"directory": {"path": _path(rootfs, "rootfs"), "writable": False}}
        if template is not None:
            if not isinstance(template, bool):
                raise config_error(f"template: expected a bool, got {type(template).__name__}")
            fs["template"] = template
        layered = overlay is not None or image is not None
        if not layered and (upper is not None or upper_size is not None or overlay_driver is not None
                            or image_store is not None):
            what = "upper" if upper is not None else "upper_size" if upper_size is not None else \
                "overlay_driver" if overlay_driver is not None else "image_store"
            raise config_error(f"{what}: needs overlay= or image=")
        if layered:
            if isinstance(overlay, (str, bytes)):
                raise config_error("overlay: expected a list of lower directories, got a single str")
            ov: Dict[str, Any] = {"lowers": _paths(overlay or [], "overlay")}
            if image is not None:
                layout, sep, tag = _path(image, "image").rpartition(":")
                if not sep or "/" in tag:
                    layout, tag = _path(image, "image"), ""
                ov["image"] = {"layout": layout, "tag": tag or None,
                               "store": None if image_store is None else _path(image_store, "image_store")}
            elif image_store is not None:
                raise config_error("image_store: needs image=")
            if upper is not None and upper_size is not None:
                raise config_error("upper_size: sizes the temporary upper; a persistent upper= has none")
            if upper is not None:
                ov["upper"] = {"persistent": {"path": _path(upper, "upper")}}
            else:
                size = None if upper_size is None else parse_size(upper_size, "upper_size")
                ov["upper"] = {"ephemeral": {"size": size}}
            ov["driver"] = _choice(overlay_driver or "auto", "overlay_driver", ("auto", "kernel", "fuse"))
            fs["root"] = {"overlay": ov}
        for items, writable, name in ((binds, False, "binds"), (rw_binds, True, "rw_binds")):
            if isinstance(items, (str, bytes)):
                raise config_error(f"{name}: expected a list, got a single str")
            for b in items:
                if isinstance(b, tuple):
                    if len(b) != 2:
                        raise config_error(f"{name}: expected (host_path, sandbox_path), got {b!r}")
                    src, dst = _path(b[0], name), _path(b[1], name)
                else:
                    src = dst = _path(b, name)
                fs["mounts"].append({"type": "bind", "source": src, "destination": dst, "readonly": not writable})
        if isinstance(tmpfs, (str, bytes)):
            raise config_error("tmpfs: expected a list, got a single str")
        for t in tmpfs:
            if isinstance(t, tuple):
                if len(t) != 2:
                    raise config_error(f"tmpfs: expected (path, size), got {t!r}")
                dst, size = _path(t[0], "tmpfs"), parse_size(t[1], "tmpfs size")
            else:
                dst, _, size_text = _path(t, "tmpfs").partition(":")
                size = parse_size(size_text, "tmpfs size") if size_text else None
            fs["mounts"].append({"type": "tmpfs", "destination": dst, "size": size, "mode": None})
        if root:
            uid = 0 if uid is None else uid
            gid = 0 if gid is None else gid
        for key, value in (("uid", uid), ("gid", gid)):
            if value is not None:
                if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**32 - 1:
                    raise config_error(f"{key}: expected an id (int 0..4294967294), got {value!r}")
                d["user"][key] = value
        if hostname is not None:
            if not isinstance(hostname, str):
                raise config_error(f"hostname: expected str, got {type(hostname).__name__}")
            d["hostname"] = hostname
        if network is not None:
            d["network"] = _choice(network, "network", ("none", "host"))
        lim = d["limits"]
        for key, size_value in (("memory", memory), ("memory_swap", memory_swap)):
            if size_value is not None:
                lim[key] = parse_size(size_value, key)
        numbers: Tuple[Tuple[str, Any, bool], ...] = (
            ("pids", pids, True), ("cpus", cpus, False), ("cpu_weight", cpu_weight, True),
            ("cpu_time", cpu_time, False))
        for key, number, integer in numbers:
            if number is not None:
                lim[key] = _number(number, key, integer=integer)
        if limits is not None:
            lim["level"] = _choice(limits, "limits", ("required", "best-effort", "off"))
        if output_limit is not None:
            # 0 keeps no output at all: any is past the limit.
            d["output_limit"] = parse_size(output_limit, "output_limit", zero=True)
        if timeout is not None:
            d["timeout"] = _number(timeout, "timeout")
        if cgroup_parent is not None:
            d["cgroup"]["parent"] = _path(cgroup_parent, "cgroup_parent")
        sec = d["security"]
        if rlimits is not None:
            if not isinstance(rlimits, Mapping):
                raise config_error(f"rlimits: expected a dict, got {type(rlimits).__name__}")
            for name, value in rlimits.items():
                if not isinstance(name, str) or isinstance(value, bool) or not isinstance(value, int) or value < 0:
                    raise config_error(f"rlimits: expected name -> non-negative int, got {name!r}: {value!r}")
                sec["rlimits"][name] = value
        if seccomp is not None:
            if seccomp in ("default", "none"):
                sec["seccomp"] = seccomp
            else:
                sec["seccomp"] = {"profile": {"path": _path(seccomp, "seccomp")}}
        if landlock is not None:
            if landlock is True:
                sec["landlock"]["want"] = "best-effort"
            elif landlock is False:
                sec["landlock"]["want"] = "off"
            else:
                sec["landlock"]["want"] = _choice(landlock, "landlock", ("required", "best-effort", "off"))
        sec["landlock"]["read"].extend(_paths(landlock_read, "landlock_read"))
        sec["landlock"]["write"].extend(_paths(landlock_write, "landlock_write"))
        sec["landlock"]["tcp_bind"].extend(_ports(tcp_bind, "tcp_bind"))
        sec["landlock"]["tcp_connect"].extend(_ports(tcp_connect, "tcp_connect"))
        sec["capabilities"].extend(_strings(capabilities, "capabilities"))
        for key, flag in (("allow_nested_userns", allow_nested_userns), ("mask_proc", mask_proc)):
            if flag is not None:
                if not isinstance(flag, bool):
                    raise config_error(f"{key}: expected a bool, got {type(flag).__name__}")
                sec[key] = flag
        return self
