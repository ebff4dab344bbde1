"""The exams grade themselves: `nbgrader autograde` runs, for each exam, on the
reference, on the blank student version and on every declared wrong answer (one call
per exam), and the release hides every solution and hidden test."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from labkit import exams
from labkit.book import ROOT


def _grade(exam: str) -> tuple[dict, dict, dict]:
    """(source, release, scores) for one exam: every submission in one autograde run."""
    source_path = ROOT / exam
    source = json.loads(source_path.read_text())
    seen: dict[str, dict] = {}

    def submissions(release: dict) -> dict[str, dict]:
        seen["release"] = release
        subs = {"reference": exams.reference_submission(release, source)}
        subs["blank"] = release
        for n, (gid, code) in enumerate(exams.wrong_answers(source)):
            subs[f"wrong-{n:02d}-{gid}"] = exams.with_wrong_answer(
                release, source, gid, code
            )
        return subs

    started = time.perf_counter()
    scores = exams.autograde(source_path, submissions)
    print(
        f"\n{source_path.stem}: nbgrader generate_assignment + autograde of "
        f"{len(scores)} submissions took {time.perf_counter() - started:.1f} s"
    )
    return source, seen["release"], scores


@pytest.fixture(scope="module")
def all_graded() -> dict[str, tuple[dict, dict, dict]]:
    """The three exams graded side by side (each is its own nbgrader process)."""
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=len(exams.EXAMS)) as pool:
        futures = {exam: pool.submit(_grade, exam) for exam in exams.EXAMS}
        graded = {exam: future.result() for exam, future in futures.items()}
    print(f"\nall exams graded in {time.perf_counter() - started:.1f} s")
    return graded


@pytest.fixture(params=exams.EXAMS, ids=lambda p: Path(p).stem)
def graded(request, all_graded):
    return all_graded[request.param]


def test_points_and_task_count(graded) -> None:
    source, _, _ = graded
    points = exams.max_points(source)
    assert 10 <= len(points) <= 15, f"{len(points)} tasks; an exam has 10 to 15"
    assert all(p > 0 for p in points.values())
    solutions = [
        gid
        for gid, c in exams.cells_by_grade_id(source).items()
        if c["metadata"]["nbgrader"].get("solution")
    ]
    assert sorted(map(exams.task_of, solutions)) == sorted(points), (
        "every task has one solution cell `tNN-answer` and one test cell `tNN`"
    )


def test_reference_scores_full_marks(graded) -> None:
    source, _, scores = graded
    points = exams.max_points(source)
    assert scores["reference"] == {**points, "total": sum(points.values())}


def test_blank_submission_scores_zero(graded) -> None:
    _, _, scores = graded
    assert scores["blank"]["total"] == 0, scores["blank"]


def test_each_wrong_answer_loses_exactly_its_points(graded) -> None:
    source, _, scores = graded
    points = exams.max_points(source)
    wrong = exams.wrong_answers(source)
    tasks_with_wrong = {exams.task_of(gid) for gid, _ in wrong}
    assert tasks_with_wrong == set(points), (
        f"tasks without a wrong answer: {sorted(set(points) - tasks_with_wrong)}"
    )
    for n, (gid, _) in enumerate(wrong):
        task = exams.task_of(gid)
        got = scores[f"wrong-{n:02d}-{gid}"]
        expected = {**points, task: 0.0}
        expected["total"] = sum(points.values()) - points[task]
        assert got == expected, f"wrong answer {n} of {task}: {got}"


def test_release_hides_solutions_and_hidden_tests(graded) -> None:
    source, release, _ = graded
    released = "\n".join(exams.cell_source(c) for c in release["cells"])
    for marker in (exams.BEGIN, exams.HIDDEN_BEGIN):
        assert marker not in released
    secret: set[str] = set()
    public: set[str] = set()  # lines the source also shows outside its regions
    for cell in source["cells"]:
        inside = False
        for line in exams.cell_source(cell).splitlines():
            if line.strip() in (exams.BEGIN, exams.HIDDEN_BEGIN):
                inside = True
            elif line.strip() in (exams.END, exams.HIDDEN_END):
                inside = False
            else:
                (secret if inside else public).add(line.strip())
    secret = {line for line in secret - public if len(line) > 12}
    released_lines = {line.strip() for line in released.splitlines()}
    leaked = sorted(secret & released_lines)
    assert secret and not leaked, f"the release shows: {leaked[:3]}"
