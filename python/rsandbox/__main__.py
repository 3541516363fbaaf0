"""``python -m rsandbox run [OPTIONS] -- CMD...`` and ``python -m rsandbox doctor``: the CLI's
``run`` and ``doctor`` for hosts that have the Python package but not the ``rsandbox`` binary.

Exit status of ``run``: the command's; 128+N when signal N killed it; 124 when ``--timeout``
killed it; 125 when the sandbox could not be set up or the command line is wrong; 126/127
when the command cannot be executed / was not found.
"""

import argparse
import dataclasses
import json
import sys
from typing import Any, Dict, List, NoReturn, Optional

import rsandbox


class _Parser(argparse.ArgumentParser):
    """Usage errors exit 125, never a code the command could give (argparse's is 2)."""

    def error(self, message: str) -> "NoReturn":
        self.print_usage(sys.stderr)
        self.exit(125, f"{self.prog}: error: {message}\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m rsandbox")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run a command in a sandbox")
    run.add_argument("--timeout", type=float, help="wall-clock limit in seconds")
    run.add_argument("--memory", help="memory limit, e.g. 256M")
    run.add_argument("--pids", type=int, help="process limit")
    run.add_argument("--cpus", type=float, help="CPU bandwidth, e.g. 0.5")
    run.add_argument("--cpu-time", type=float, help="CPU-time budget in seconds")
    run.add_argument("--output-limit", help="bytes kept per captured stream (with --json)")
    run.add_argument("--limits", choices=["required", "best-effort", "off"])
    run.add_argument("--hostname")
    run.add_argument("--network", choices=["none", "host"])
    run.add_argument("--uid", type=int)
    run.add_argument("--gid", type=int)
    run.add_argument("--root", action="store_true", help="uid and gid 0 inside")
    run.add_argument("--rootfs", help="a host directory as the root (read-only)")
    run.add_argument("--bind", action="append", default=[], metavar="SRC[:DST]", help="read-only bind")
    run.add_argument("--rw-bind", action="append", default=[], metavar="SRC[:DST]", help="writable bind")
    run.add_argument("--tmpfs", action="append", default=[], metavar="DST[:SIZE]")
    run.add_argument("--cwd")
    run.add_argument("--env", action="append", default=[], metavar="K=V")
    run.add_argument("--json", action="store_true",
                     help="capture the output and print the result (with the report) as JSON")
    run.add_argument("cmd", nargs=argparse.REMAINDER)
    sub.add_parser("doctor", help="what this host supports")
    return parser


def _binds(items: List[str]) -> List[Any]:
    out: List[Any] = []
    for item in items:
        src, sep, dst = item.partition(":")
        out.append((src, dst) if sep else src)
    return out


def main(argv: Optional[List[str]] = None) -> int:
    a = _parser().parse_args(argv)
    if a.command == "doctor":
        print(json.dumps(rsandbox.doctor(), indent=2))
        return 0
    cmd = a.cmd[1:] if a.cmd[:1] == ["--"] else a.cmd
    if not cmd:
        print("python -m rsandbox run: no command given (… run [OPTIONS] -- CMD ARGS)", file=sys.stderr)
        return 125
    options: Dict[str, Any] = {
        key: value for key, value in (
            ("memory", a.memory), ("pids", a.pids), ("cpus", a.cpus), ("cpu_time", a.cpu_time),
            ("output_limit", a.output_limit), ("limits", a.limits), ("hostname", a.hostname),
            ("network", a.network), ("uid", a.uid), ("gid", a.gid), ("rootfs", a.rootfs),
        ) if value is not None
    }
    env = {}
    for item in a.env:
        key, sep, value = item.partition("=")
        if not sep:
            print(f"python -m rsandbox run: --env {item!r}: expected K=V", file=sys.stderr)
            return 125
        env[key] = value
    try:
        r = rsandbox.run(cmd, timeout=a.timeout, root=a.root, binds=_binds(a.bind),
                         rw_binds=_binds(a.rw_bind), tmpfs=a.tmpfs, cwd=a.cwd, env=env or None,
                         capture_output=a.json, **options)
    except KeyboardInterrupt:
        # The sandbox has been killed and reaped; Ctrl-C is no error of this program's.
        return 130
    except rsandbox.TimeoutExpired as e:
        if a.json and e.result is not None:
            _print_json(e.result)
        return 124
    except rsandbox.SandboxError as e:
        print(f"rsandbox: {e}", file=sys.stderr)
        if e.remedy:
            print(f"rsandbox: remedy: {e.remedy}", file=sys.stderr)
        if isinstance(e, PermissionError) and e.kind == "not-executable":
            return 126
        return 127 if e.kind == "executable-not-found" else 125
    if a.json:
        _print_json(r)
    return r.returncode if r.returncode >= 0 else 128 - r.returncode


def _print_json(r: rsandbox.Result) -> None:
    """The result as JSON: its public fields, the report included, the output as text."""
    fields = {f.name: getattr(r, f.name) for f in dataclasses.fields(r) if not f.name.startswith("_")}
    for stream in ("stdout", "stderr"):
        if isinstance(fields[stream], bytes):
            fields[stream] = fields[stream].decode("utf-8", "replace")
    print(json.dumps(fields, indent=2))


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
