"""Glue measured numbers into prose (myst-nb): `{glue:text}`name:.1f`` in Markdown."""

from __future__ import annotations

import math
import numbers


def glue_number(name: str, value: float) -> int | float:
    """Glue `value` under `name` as a plain Python int or float (numpy scalars would show as
    `np.float64(...)` and break `{glue:text}` formatting); return that number."""
    from myst_nb import glue

    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        number: int | float = int(value)
    else:
        number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"glue_number({name!r}): value must be finite, got {value!r}")
    glue(name, number, display=False)
    return number
