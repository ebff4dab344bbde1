"""Exercises the reader solves: a check cell that says "not solved yet" and proves it
can fail.

The pattern (book/contributing.md): the exercise text; the reader's cell with a
placeholder (`answer = ...`, or a function whose body raises NotImplementedError); a
check cell calling `check_exercise`; the reference in a gated
`solution-start`/`solution-end` block, followed by the same call with `reference=True`.

Every call first proves the check can fail: it must reject the placeholder and every
declared wrong answer, else `ExerciseDefect` is raised. Run on the reader's answer, it
prints a verdict and never raises, so the stored notebook stays clean. A reference
answer that the check rejects raises `ExerciseDefect`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

LOG_ENV = "LABKIT_EXERCISE_LOG"
NOT_WRITTEN = "the function body still raises NotImplementedError"
RECORDS: list[dict[str, Any]] = []


class ExerciseDefect(AssertionError):
    """A check that accepts the placeholder or a wrong answer, or rejects the reference:
    a defect of the book."""


def not_implemented(*args: Any, **kwargs: Any) -> Any:
    """The placeholder of a function exercise: a body that has not been written yet."""
    raise NotImplementedError("replace this body with your own code")


def verdict(check: Callable[[Any], Any], answer: Any) -> str | None:
    """None when `check(answer)` passes, else why not (the check's assertion message, or
    the error)."""
    try:
        check(answer)
    except NotImplementedError:
        return NOT_WRITTEN
    except AssertionError as err:
        return str(err) or "the check's assertion failed"
    except Exception as err:  # a wrong answer may break the check (a str for a number)
        return f"{type(err).__name__}: {err}"
    return None


def check_exercise(
    label: str,
    check: Callable[[Any], Any],
    answer: Any,
    *,
    wrong: Sequence[Any],
    hint: str,
    placeholder: Any = ...,
    reference: bool = False,
) -> None:
    """Judge `answer` with `check` (which raises AssertionError with a message when it
    is wrong).

    `wrong` holds plausible wrong answers; `placeholder` is what the reader's cell holds
    (`...`, or `not_implemented` for a function exercise). Returns True when `answer`
    passes.
    """
    if not wrong:
        raise ValueError(
            f"{label}: declare at least one plausible wrong answer in `wrong=`"
        )
    if verdict(check, placeholder) is None:
        raise ExerciseDefect(
            f"{label}: the check accepts the placeholder {placeholder!r}"
        )
    accepted_wrong = [w for w in wrong if verdict(check, w) is None]
    if accepted_wrong:
        raise ExerciseDefect(
            f"{label}: the check accepts the wrong answer(s) {accepted_wrong!r}"
        )

    problem = "placeholder" if answer is ... else verdict(check, answer)
    record = {
        "label": label,
        "stage": "reference" if reference else "reader",
        "placeholder_rejected": True,
        "wrong_rejected": len(wrong),
        "accepted": problem is None,
    }
    RECORDS.append(record)
    log = os.environ.get(LOG_ENV)
    if log:
        with Path(log).open("a") as f:
            f.write(json.dumps(record) + "\n")

    if reference and problem is not None:
        raise ExerciseDefect(f"{label}: the reference solution is rejected: {problem}")
    if problem is None:
        print(f"✓ {label}: solved.")
    elif problem == "placeholder":
        print(
            f"✗ {label}: not solved yet: replace the `...` in the cell above.\n  hint: "
            f"{hint}"
        )
    elif problem == NOT_WRITTEN:
        print(
            f"✗ {label}: not solved yet: write the function body in the cell above.\n  "
            f"hint: {hint}"
        )
    else:
        print(f"✗ {label}: not yet right: {problem}\n  hint: {hint}")
    print(
        f"  (this check rejects the placeholder and {len(wrong)} plausible wrong "
        "answer(s))"
    )
