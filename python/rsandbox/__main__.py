"""``python -m rsandbox run [--timeout S] [--memory M] -- CMD...`` and ``python -m rsandbox doctor``."""

import argparse
import json
import sys

import rsandbox


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m rsandbox")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run a command in a sandbox")
    run.add_argument("--timeout", type=float)
    run.add_argument("--memory")
    run.add_argument("--limits", choices=["required", "best-effort"])
    run.add_argument("cmd", nargs=argparse.REMAINDER)
    sub.add_parser("doctor", help="what this host supports")
    a = parser.parse_args()
    if a.command == "doctor":
        print(json.dumps(rsandbox.doctor(), indent=2))
        return 0
    cmd = a.cmd[1:] if a.cmd[:1] == ["--"] else a.cmd
    try:
        r = rsandbox.run(cmd, timeout=a.timeout, memory=a.memory, limits=a.limits)
    except rsandbox.TimeoutExpired:
        return 137
    except rsandbox.SandboxError as e:
        print(f"rsandbox: {e}", file=sys.stderr)
        return 127 if isinstance(e, FileNotFoundError) else 125
    return r.returncode if r.returncode >= 0 else 128 - r.returncode


if __name__ == "__main__":
    sys.exit(main())
