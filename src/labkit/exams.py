"""Certification exams graded by nbgrader: release a student version, autograde
submissions, build wrong-answer submissions for the exams' own tests.

The stored exam notebook is nbgrader's *source* version. Every nbgrader command runs
in a temporary course directory, so that its gradebook, config and folders never land
in the repository. Grading is nbgrader's own (`nbgrader autograde`); this module only
lays out folders and reads the gradebook.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

EXAMS = [
    "notebooks/exams/foundations.ipynb",
    "notebooks/exams/platform-admin.ipynb",
    "notebooks/exams/ai-architect.ipynb",
]
BEGIN, END = "### BEGIN SOLUTION", "### END SOLUTION"
HIDDEN_BEGIN, HIDDEN_END = "### BEGIN HIDDEN TESTS", "### END HIDDEN TESTS"
CONFIG = """c = get_config()  # noqa: F821
c.CourseDirectory.course_id = "handbook-exams"
c.Execute.timeout = {timeout_s}
# A kernel that dies while starting (concurrent kernels race for ports) starts again.
c.Execute.execute_retries = 2
c.ClearSolutions.code_stub = {{
    "python": "# YOUR CODE HERE\\nraise NotImplementedError()"
}}
"""


def cell_source(cell: Mapping[str, Any]) -> str:
    """A cell's source as one string."""
    src = cell["source"]
    return src if isinstance(src, str) else "".join(src)


def _nbgrader(*args: str, cwd: Path) -> None:
    """Run the nbgrader command line of this Python environment in `cwd`."""
    # nbgrader calls `alembic` (and the kernel's Python) from PATH: this environment's
    bin = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": bin + os.pathsep + os.environ.get("PATH", "")}
    done = subprocess.run(
        [sys.executable, "-m", "nbgrader", *args, "--log-level=WARN"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise RuntimeError(
            f"nbgrader {' '.join(args)} failed ({done.returncode}):\n"
            f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        )


def _course(root: Path, source_nb: Path, timeout_s: int) -> str:
    """Lay out a course directory holding `source_nb` as assignment; its name."""
    assignment = source_nb.stem
    (root / "nbgrader_config.py").write_text(CONFIG.format(timeout_s=timeout_s))
    folder = root / "source" / assignment
    folder.mkdir(parents=True)
    nb = json.loads(source_nb.read_text())
    (folder / source_nb.name).write_text(json.dumps(nb))
    return assignment


def cells_by_grade_id(nb: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Every cell that carries an nbgrader grade_id, by that id."""
    return {
        c["metadata"]["nbgrader"]["grade_id"]: c
        for c in nb["cells"]
        if "grade_id" in c.get("metadata", {}).get("nbgrader", {})
    }


def max_points(source_nb: Mapping[str, Any]) -> dict[str, float]:
    """Points of every autograded test cell, by grade_id."""
    return {
        gid: float(c["metadata"]["nbgrader"]["points"])
        for gid, c in cells_by_grade_id(source_nb).items()
        if c["metadata"]["nbgrader"].get("grade")
    }


def release(source_nb: str | Path, out_dir: str | Path) -> Path:
    """Run `nbgrader generate_assignment` on `source_nb`; the student version, written
    into `out_dir`."""
    source_nb, out_dir = Path(source_nb), Path(out_dir)
    with tempfile.TemporaryDirectory(prefix="exam-course-") as tmp:
        course = Path(tmp)
        assignment = _course(course, source_nb, timeout_s=60)
        _nbgrader("generate_assignment", assignment, "--force", cwd=course)
        released = course / "release" / assignment / source_nb.name
        out_dir.mkdir(parents=True, exist_ok=True)
        target = out_dir / source_nb.name
        shutil.copyfile(released, target)
    return target


def _solution_region(text: str, code: str | None) -> str:
    """`text` with its marker lines removed, or with the region between them replaced
    by `code` (indented like the BEGIN marker)."""
    lines, out, inside = text.splitlines(), [], False
    regions = sum(line.strip() == BEGIN for line in lines)
    if code is not None and regions != 1:
        raise ValueError(f"a solution cell needs one solution region, not {regions}")
    for line in lines:
        if line.strip() == BEGIN:
            inside = True
            if code is not None:
                indent = line[: len(line) - len(line.lstrip())]
                out.extend(textwrap.indent(code, indent).splitlines())
            continue
        if line.strip() == END:
            inside = False
            continue
        if not inside or code is None:
            out.append(line)
    return "\n".join(out)


def reference_submission(
    release_nb: Mapping[str, Any], source_nb: Mapping[str, Any]
) -> dict[str, Any]:
    """The release version with every solution cell answered by the reference."""
    sub = copy.deepcopy(dict(release_nb))
    sources = cells_by_grade_id(source_nb)
    for gid, cell in cells_by_grade_id(sub).items():
        if cell["metadata"]["nbgrader"].get("solution"):
            cell["source"] = _solution_region(cell_source(sources[gid]), None)
    return sub


def with_wrong_answer(
    release_nb: Mapping[str, Any],
    source_nb: Mapping[str, Any],
    grade_id: str,
    code: str,
) -> dict[str, Any]:
    """The reference submission with the solution region of cell `grade_id` replaced
    by `code`."""
    sub = reference_submission(release_nb, source_nb)
    cell = cells_by_grade_id(sub)[grade_id]
    source = cell_source(cells_by_grade_id(source_nb)[grade_id])
    cell["source"] = _solution_region(source, code)
    return sub


def wrong_answers(source_nb: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(solution grade_id, code) for every wrong answer declared in the metadata."""
    return [
        (gid, code)
        for gid, cell in cells_by_grade_id(source_nb).items()
        for code in cell["metadata"].get("labkit", {}).get("wrong", [])
    ]


def task_of(solution_id: str) -> str:
    """The test cell graded for a solution cell: `t03-answer` -> `t03`."""
    return re.sub(r"-answer$", "", solution_id)


def autograde(
    source_nb: str | Path,
    submissions: Mapping[str, Mapping[str, Any]]
    | Callable[[dict[str, Any]], Mapping[str, Mapping[str, Any]]],
    timeout_s: int = 60,
) -> dict[str, dict[str, float]]:
    """Run `nbgrader autograde` once on every submission (student id -> notebook);
    student -> {grade_id: points, "total": points}.

    `submissions` may also be a function of the release version, which is then built
    by the same `generate_assignment` run as the gradebook (one nbgrader start less)."""
    from nbgrader.api import Gradebook

    source_nb = Path(source_nb)
    with tempfile.TemporaryDirectory(prefix="exam-course-") as tmp:
        course = Path(tmp)
        assignment = _course(course, source_nb, timeout_s)
        _nbgrader("generate_assignment", assignment, "--force", cwd=course)
        if callable(submissions):
            released = course / "release" / assignment / source_nb.name
            submissions = submissions(json.loads(released.read_text()))
        for student, nb in submissions.items():
            folder = course / "submitted" / student / assignment
            folder.mkdir(parents=True)
            (folder / source_nb.name).write_text(json.dumps(nb))
        _nbgrader("autograde", assignment, "--create", "--force", cwd=course)
        scores: dict[str, dict[str, float]] = {}
        with Gradebook(f"sqlite:///{course / 'gradebook.db'}") as gradebook:
            for student in submissions:
                notebook = gradebook.find_submission_notebook(
                    source_nb.stem, assignment, student
                )
                grades = {g.name: float(g.score) for g in notebook.grades}
                scores[student] = {**grades, "total": float(notebook.score)}
    return scores


def write_release(root: Path, out: Path | None = None) -> list[Path]:
    """Student versions of every exam, for the hub: `out/<exam>/<exam>.ipynb` (out
    defaults to `root/_build/exams/release`)."""
    root = Path(root)
    out = Path(out) if out is not None else root / "_build" / "exams" / "release"
    return [release(root / exam, out / Path(exam).stem) for exam in EXAMS]
