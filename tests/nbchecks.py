"""Notebook hygiene checks, as functions returning problems, so that tests and self-tests share them."""

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
    return cell["source"] if isinstance(cell["source"], str) else "".join(cell["source"])


def code_cells(nb: dict[str, Any]) -> list[tuple[int, dict[str, Any]]]:
    """(index among all cells, cell) for every code cell."""
    return [(i, c) for i, c in enumerate(nb["cells"]) if c["cell_type"] == "code"]


def output_text(output: dict[str, Any]) -> str:
    """Every textual part of an output (stream text, text/* and json data, tracebacks)."""
    parts: list[str] = []
    if "text" in output:
        parts.append(output["text"] if isinstance(output["text"], str) else "".join(output["text"]))
    for mime, value in (output.get("data") or {}).items():
        if mime.startswith("image/") and mime != "image/svg+xml":
            continue
        parts.append(value if isinstance(value, str) else json.dumps(value))
    parts.extend(output.get("traceback") or [])
    return "\n".join(parts)


def structure_problems(nb: dict[str, Any]) -> list[str]:
    """Kernelspec, parameters cell with profile, stored outputs, no errors, execution counts in order."""
    problems = []
    if nb.get("metadata", {}).get("kernelspec", {}).get("name") != "python3":
        problems.append("kernelspec is not python3")
    cells = code_cells(nb)
    if not cells:
        return problems + ["no code cells"]
    first_index, first = cells[0]
    if "parameters" not in first.get("metadata", {}).get("tags", []):
        problems.append(f"cell {first_index}: the first code cell is not tagged 'parameters'")
    elif not re.search(r"^profile\s*=", source(first), re.M):
        problems.append(f"cell {first_index}: the parameters cell does not set `profile`")
    if not any(c.get("outputs") for _, c in cells):
        problems.append("no stored outputs")
    counts = []
    for index, cell in cells:
        for output in cell.get("outputs", []):
            if output.get("output_type") == "error":
                problems.append(f"cell {index}: stores an error output ({output.get('ename')})")
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
                    problems.append(f"cell {index}: output shows a {what}: {match.group(0)!r}")
    return problems


def size_problems(path: Path) -> list[str]:
    size = Path(path).stat().st_size
    return [f"{size / 2**20:.1f} MB exceeds 2 MB"] if size > MAX_BYTES else []
