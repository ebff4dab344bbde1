"""Notebook hygiene checks, as functions returning problems, so that tests and
self-tests share them."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

MAX_BYTES = 2 * 1024 * 1024
# Absolute paths that would leak the machine a notebook ran on, and credential shapes.
LEAKS = {
    "home or work path": re.compile(r"(/root/|/home/\w|/Users/\w|/work/)"),
    "temp path": re.compile(r"(/tmp/|/var/folders/)"),
    "GitHub token": re.compile(r"gh[pousr]_[A-Za-z0-9]{30,}"),
    "Hugging Face token": re.compile(r"hf_[A-Za-z0-9]{30,}"),
    "AWS key": re.compile(r"AKIA[0-9A-Z]{16}"),
    "private key": re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    "bearer token": re.compile(r"(?i)bearer\s+[A-Za-z0-9._-]{20,}"),
}


def load(path: Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text())


def source(cell: dict[str, Any]) -> str:
    return (
        cell["source"] if isinstance(cell["source"], str) else "".join(cell["source"])
    )


def code_cells(nb: dict[str, Any]) -> list[tuple[int, dict[str, Any]]]:
    """(index among all cells, cell) for every code cell."""
    return [(i, c) for i, c in enumerate(nb["cells"]) if c["cell_type"] == "code"]


def output_text(output: dict[str, Any]) -> str:
    """Every textual part of an output (stream text, text/* and json data,
    tracebacks)."""
    parts: list[str] = []
    if "text" in output:
        parts.append(
            output["text"]
            if isinstance(output["text"], str)
            else "".join(output["text"])
        )
    for mime, value in (output.get("data") or {}).items():
        if mime.startswith("image/") and mime != "image/svg+xml":
            continue
        parts.append(value if isinstance(value, str) else json.dumps(value))
    parts.extend(output.get("traceback") or [])
    return "\n".join(parts)


def structure_problems(nb: dict[str, Any]) -> list[str]:
    """Kernelspec, parameters cell with profile, stored outputs, no errors, execution
    counts in order."""
    problems = []
    if nb.get("metadata", {}).get("kernelspec", {}).get("name") != "python3":
        problems.append("kernelspec is not python3")
    cells = code_cells(nb)
    if not cells:
        return problems + ["no code cells"]
    first_index, first = cells[0]
    if "parameters" not in first.get("metadata", {}).get("tags", []):
        problems.append(
            f"cell {first_index}: the first code cell is not tagged 'parameters'"
        )
    elif not re.search(r"^profile\s*=", source(first), re.M):
        problems.append(
            f"cell {first_index}: the parameters cell does not set `profile`"
        )
    if not any(c.get("outputs") for _, c in cells):
        problems.append("no stored outputs")
    counts = []
    for index, cell in cells:
        for output in cell.get("outputs", []):
            if output.get("output_type") == "error":
                problems.append(
                    f"cell {index}: stores an error output ({output.get('ename')})"
                )
        if source(cell).strip():
            if cell.get("execution_count") is None:
                problems.append(f"cell {index}: not executed")
            else:
                counts.append(cell["execution_count"])
    if counts != sorted(counts) or len(set(counts)) != len(counts):
        problems.append("execution counts out of order (cells run by hand?)")
    return problems


def leak_problems(nb: dict[str, Any]) -> list[str]:
    """Absolute home/temp paths, tokens or secrets in any output."""
    problems = []
    for index, cell in code_cells(nb):
        for output in cell.get("outputs", []):
            text = output_text(output)
            for what, pattern in LEAKS.items():
                match = pattern.search(text)
                if match:
                    problems.append(
                        f"cell {index}: output shows a {what}: {match.group(0)!r}"
                    )
    return problems


def size_problems(path: Path) -> list[str]:
    size = Path(path).stat().st_size
    return [f"{size / 2**20:.1f} MB exceeds 2 MB"] if size > MAX_BYTES else []


EXERCISE = re.compile(r"```\{exercise\}[^\n]*\n(?:[^\n]*\n)*?:label:\s*(\S+)")
SOLUTION_START = re.compile(r"```\{solution-start\}\s*(\S+)")
SOLUTION_END = re.compile(r"```\{solution-end\}")
PLAIN_SOLUTION = re.compile(r"```\{solution\}")


def is_placeholder(src: str) -> bool:
    """True when a reader's cell only sets names to `...` or defines functions that
    raise NotImplementedError."""
    import ast

    try:
        tree = ast.parse(
            "\n".join(
                line for line in src.splitlines() if not line.lstrip().startswith("%")
            )
        )
    except SyntaxError:
        return False
    placeholders = 0
    for node in tree.body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            continue
        if (
            isinstance(node, ast.Expr)
            and isinstance(node.value, ast.Constant)
            and isinstance(node.value.value, str)
        ):
            continue
        if (
            isinstance(node, (ast.Assign, ast.AnnAssign))
            and isinstance(node.value, ast.Constant)
            and node.value.value is Ellipsis
        ):
            placeholders += 1
            continue
        if isinstance(node, ast.FunctionDef):
            body = [
                b
                for b in node.body
                if not (isinstance(b, ast.Expr) and isinstance(b.value, ast.Constant))
            ]
            if (
                len(body) == 1
                and isinstance(body[0], ast.Raise)
                and "NotImplementedError" in ast.unparse(body[0])
            ):
                placeholders += 1
                continue
        return False
    return placeholders > 0


def _calls_check(src: str, label: str) -> bool:
    return (
        "check_exercise(" in src
        and re.search(rf"""check_exercise\(\s*["']{re.escape(label)}["']""", src)
        is not None
    )


def _stdout(cell: dict[str, Any]) -> str:
    return "\n".join(output_text(o) for o in cell.get("outputs", []))


def exercise_labels(nb: dict[str, Any]) -> list[str]:
    return [
        label
        for c in nb["cells"]
        if c["cell_type"] == "markdown"
        for label in EXERCISE.findall(source(c))
    ]


def exercise_problems(nb: dict[str, Any]) -> list[str]:
    """The frame's exercise pattern: placeholder cell, check cell, gated solution
    checked with reference=True."""
    problems = []
    cells = nb["cells"]
    for i, cell in enumerate(cells):
        if cell["cell_type"] != "markdown":
            continue
        text = source(cell)
        labels = EXERCISE.findall(text)
        if len(labels) > 1:
            problems.append(
                f"cell {i}: one exercise per Markdown cell, so that its reader's cell "
                "follows it"
            )
        if PLAIN_SOLUTION.search(text):
            problems.append(
                f"cell {i}: a {{solution}} directive; use the gated "
                "solution-start/solution-end"
            )
        for label in labels[:1]:
            following = [
                (j, c)
                for j, c in enumerate(cells[i + 1 :], start=i + 1)
                if c["cell_type"] == "code"
            ][:2]
            if len(following) < 2 or any(
                cells[k]["cell_type"] == "markdown"
                for k in range(i + 1, following[-1][0])
            ):
                problems.append(
                    f"{label}: the exercise must be followed by the reader's cell and "
                    "the check cell"
                )
                continue
            (r, reader), (k, check) = following
            if not is_placeholder(source(reader)):
                problems.append(
                    f"{label}: the reader's cell {r} is not a placeholder (`name = "
                    "...` or a body "
                    "that raises NotImplementedError)"
                )
            if not _calls_check(source(check), label) or "reference=True" in source(
                check
            ):
                problems.append(
                    f"{label}: cell {k} must call labkit.check_exercise({label!r}, ...)"
                )
            elif "not solved yet" not in _stdout(check):
                problems.append(
                    f"{label}: the check cell {k} does not say 'not solved yet' on the "
                    "placeholder"
                )
            start = next(
                (
                    j
                    for j, c in enumerate(cells)
                    if c["cell_type"] == "markdown"
                    and label in SOLUTION_START.findall(source(c))
                ),
                None,
            )
            if start is None:
                problems.append(
                    f"{label}: no gated solution (```{{solution-start}} {label}```)"
                )
                continue
            if ":class: dropdown" not in source(cells[start]):
                problems.append(
                    f"{label}: the solution block is not collapsed (:class: dropdown)"
                )
            end = next(
                (
                    j
                    for j in range(start + 1, len(cells))
                    if cells[j]["cell_type"] == "markdown"
                    and SOLUTION_END.search(source(cells[j]))
                ),
                None,
            )
            block = cells[start + 1 : end] if end is not None else []
            if end is None:
                problems.append(f"{label}: the solution block has no solution-end")
            refs = [
                c
                for c in block
                if c["cell_type"] == "code"
                and _calls_check(source(c), label)
                and "reference=True" in source(c)
            ]
            if not refs:
                problems.append(
                    f"{label}: the solution block does not run check_exercise(..., "
                    "reference=True)"
                )
            elif f"✓ {label}: solved." not in _stdout(refs[-1]):
                problems.append(
                    f"{label}: the reference solution's check does not say it is solved"
                )
    return problems


# An assert about a budget or deadline that looks at the best, typical or first sample
# instead of the tail: min(), best_*, median, p50, [0] of sorted samples.
_BUDGET_WORDS = re.compile(r"(?i)budget|deadline|slo\b|_ms_target|frame_interval")
_BEST_OF_N = re.compile(
    r"(?i)\bmin\(|\bbest\w*|median|\bp50\b|[\"']min[\"']|[\"']median[\"']|sorted\([^)]*\)\[0\]"
)


def _parse(src: str):
    import ast

    text = "\n".join(
        "" if line.lstrip().startswith(("%", "!")) else line
        for line in src.splitlines()
    )
    try:
        return ast.parse(text), text
    except SyntaxError:
        return None, text


def budget_problems(nb: dict[str, Any]) -> list[str]:
    """Asserts that hold a budget against the best (or typical) of N samples: in the
    assert itself, or through a name the same cell assigned from such a choice.

    A latency budget is a statement about the tail: it is asserted on the p95 or p99
    of all samples (book/contributing.md, Budgets)."""
    import ast

    problems = []
    for index, cell in code_cells(nb):
        tree, text = _parse(source(cell))
        if tree is None:
            continue
        chosen = {
            target.id
            for node in ast.walk(tree)
            if isinstance(node, ast.Assign)
            and _BEST_OF_N.search(ast.get_source_segment(text, node.value) or "")
            for target in node.targets
            if isinstance(target, ast.Name)
        }
        for node in ast.walk(tree):
            if not isinstance(node, ast.Assert):
                continue
            test = ast.get_source_segment(text, node.test) or ""
            if not _BUDGET_WORDS.search(test):
                continue
            names = {n.id for n in ast.walk(node.test) if isinstance(n, ast.Name)}
            via = sorted(names & chosen)
            if _BEST_OF_N.search(test) or via:
                first = " ".join(test.split())[:120]
                how = f" ({', '.join(via)} is chosen as the best of N)" if via else ""
                problems.append(
                    f"cell {index}: a budget asserted on the best or typical sample, "
                    f"not on the p95/p99 of all samples{how}: {first}"
                )
    return problems
