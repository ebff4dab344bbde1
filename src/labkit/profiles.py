"""Profile and parameter checks for the papermill `parameters` cell."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

PROFILES = ("smoke", "laptop", "cluster")

T = TypeVar("T")


def check_profile(profile: str) -> str:
    """Return `profile` if it is one of PROFILES, else raise a ValueError naming the
    valid ones."""
    return check_choice("profile", profile, PROFILES)


def check_choice(name: str, value: T, valid: Iterable[T]) -> T:
    """Return `value` if it is in `valid`, else raise a ValueError naming the valid
    values."""
    valid = tuple(valid)
    if value not in valid:
        choices = ", ".join(repr(v) for v in valid)
        raise ValueError(f"{name}={value!r} is not valid; use one of: {choices}")
    return value


def check_positive(
    name: str, value: Any, *, integer: bool = True, maximum: float | None = None
) -> Any:
    """Return `value` if it is a positive number (an int when `integer`) not above
    `maximum`."""
    kind = "a positive integer" if integer else "a positive number"
    limit = f" no larger than {maximum}" if maximum is not None else ""
    ok_type = isinstance(value, int) if integer else isinstance(value, (int, float))
    if (
        isinstance(value, bool)
        or not ok_type
        or value <= 0
        or (maximum is not None and value > maximum)
    ):
        raise ValueError(f"{name}={value!r} is not valid; it must be {kind}{limit}")
    return value


def pick(profile: str, sizes: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Return the sizes for `profile` from a {profile: {name: value}} table, after
    checking the profile."""
    check_profile(profile)
    missing = [p for p in PROFILES if p not in sizes]
    if missing:
        raise ValueError(
            f"sizes table lacks profiles {missing}; it must define all of "
            f"{list(PROFILES)}"
        )
    return dict(sizes[profile])
