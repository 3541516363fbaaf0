"""The Python examples (examples/python/), exercised on the paths their own runs do not take."""

import importlib.util
from pathlib import Path

import rsandbox
from conftest import skip


def _grader():
    """examples/python/grader.py as a module: beside this file (tests/python/run copies it
    there) or in the repository."""
    here = Path(__file__).resolve().parent
    for path in (here / "grader.py", here.parent.parent / "examples" / "python" / "grader.py"):
        if path.is_file():
            spec = importlib.util.spec_from_file_location("rsandbox_example_grader", path)
            assert spec is not None and spec.loader is not None
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            return module
    skip("examples/python/grader.py not found beside the tests or in the repository")


def test_grader_example_reports_a_solution_killed_at_the_wall_clock_limit(tmp_path, capsys, monkeypatch):
    # A solution that sleeps uses no CPU time: the wall-clock limit kills it (TimeoutExpired).
    grader = _grader()
    monkeypatch.setattr(grader, "WALL_LIMIT", 0.5, raising=False)
    (tmp_path / "main.py").write_text("import time\ntime.sleep(30)\n")
    tmp_path.chmod(0o755)
    assert grader.grade(str(tmp_path)) == len(grader.CASES)
    rows = capsys.readouterr().out.splitlines()[1:]
    assert len(rows) == len(grader.CASES) and all(row.split()[1] == "wall-timeout" for row in rows), rows
    # Control: a correct solution is accepted.
    (tmp_path / "main.py").write_text("n = int(input())\nprint(n * n)\n")
    assert grader.grade(str(tmp_path)) == 0
    assert isinstance(grader._run(str(tmp_path), "4\n"), rsandbox.Result)
