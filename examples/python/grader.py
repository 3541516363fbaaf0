"""grader.py: run an untrusted solution against test cases with time and memory limits and print a
verdict table, the way a judge would.

    python examples/python/grader.py            # grades a built-in sample solution
"""

import sys
import tempfile
from pathlib import Path

import rsandbox

SOLUTION = """
import sys
n = int(sys.stdin.readline())
if n == 3:
    while True: pass            # too slow on this case
print(n * n)
"""

CASES = [("2\n", "4\n"), ("3\n", "9\n"), ("10\n", "100\n")]
WALL_LIMIT = 3  # seconds per case; the CPU-time limit is 1 s


def grade(solution_dir: str) -> int:
    print(f"{'case':<6}{'verdict':<16}{'time':>8}{'memory':>12}")
    failures = 0
    for i, (given, expected) in enumerate(CASES, 1):
        r = _run(solution_dir, given)
        verdict = r.verdict if r.verdict != "ok" else ("accepted" if r.stdout == expected else "wrong-answer")
        failures += verdict != "accepted"
        print(f"{i:<6}{verdict:<16}{r.wall_time:>7.3f}s{r.memory_peak // 1024:>10}KiB")
    return failures


def _run(solution_dir: str, given: str) -> "rsandbox.Result":
    try:
        return rsandbox.run(["python3", "/solution/main.py"], input=given, capture_output=True, text=True,
                            binds=[(solution_dir, "/solution")], cpu_time=1, memory="256M",
                            limits="best-effort", output_limit="1M", timeout=WALL_LIMIT)
    except rsandbox.TimeoutExpired as e:
        # Killed at the wall-clock limit (a solution that sleeps or blocks): the whole result
        # comes with the exception, verdict "wall-timeout".
        assert e.result is not None
        return e.result


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as d:
        Path(d, "main.py").write_text(SOLUTION)
        Path(d).chmod(0o755)
        sys.exit(0 if grade(d) == 1 else 1)  # the sample is meant to fail exactly case 2
