"""Glue measured numbers into prose (myst-nb): `{glue:text}`name:.1f`` in Markdown.

JupyterLab does not render glue roles (a reader there sees the key), so every glued
number is also kept here and `glue_table()` shows them all under the chapter's Summary:
the book and a live kernel show the same numbers.
"""

from __future__ import annotations

import math
import numbers

GLUED: dict[str, int | float] = {}


def glue_number(name: str, value: float) -> int | float:
    """Glue `value` under `name` as a plain Python int or float (numpy scalars would
    show as `np.float64(...)` and break `{glue:text}` formatting); return that
    number."""
    from myst_nb import glue

    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        number: int | float = int(value)
    else:
        number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"glue_number({name!r}): value must be finite, got {value!r}")
    glue(name, number, display=False)
    GLUED[name] = number
    return number


def glue_table() -> None:
    """Display (and return) a Markdown table of every number glued in this kernel, in
    glue order."""
    from IPython.display import Markdown, display

    if not GLUED:
        raise ValueError("glue_table(): nothing was glued in this kernel")
    lines = ["| glued as | this run's value |", "| --- | ---: |"]
    for name, value in GLUED.items():
        shown = f"{value:d}" if isinstance(value, int) else f"{value:.4g}"
        lines.append(f"| `{name}` | {shown} |")
    text = "\n".join(lines)
    display(Markdown(text))
