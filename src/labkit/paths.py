"""The learning paths: `book/paths/paths.yml` rendered into `book/paths/*.md`.

Each track is an ordered list of chapters with what a learner can do after each one and
its prerequisites. The time to complete a chapter is computed, not typed: reading time
for its prose and code plus the `laptop` run time from its stamp, rounded up to 5 min.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from labkit.book import ROOT, code_and_prose_chars

PATHS_DIR = Path("book/paths")
PATHS_YML = PATHS_DIR / "paths.yml"
# Brysbaert (2019): 238 words/min for silent reading of English non-fiction. Technical
# prose reads slower: we take 200 words/min at 5 characters a word. Code is read at half
# that speed (the book's own assumption, not a measured figure).
PROSE_CHARS_PER_MIN = 1000
CODE_CHARS_PER_MIN = 500
ROUND_MIN = 5
READING_SOURCE = (
    "M. Brysbaert, *How many words do we read per minute? A review and "
    "meta-analysis of reading rate*, Journal of Memory and Language 109 (2019) 104047, "
    "[doi:10.1016/j.jml.2019.104047](https://doi.org/10.1016/j.jml.2019.104047)"
)


def load_paths(root: Path = ROOT) -> dict[str, Any]:
    """The parsed `book/paths/paths.yml`."""
    import yaml

    return yaml.safe_load((root / PATHS_YML).read_text())


def path_chapters(paths: dict[str, Any]) -> list[str]:
    """Every chapter named on a track, in order, without repeats."""
    seen: dict[str, None] = {}
    for track in paths["tracks"]:
        for chapter in track["chapters"]:
            seen.setdefault(chapter["file"], None)
    return list(seen)


def chapter_minutes(notebook: Path) -> int | None:
    """Reading plus laptop running time in minutes, rounded up to ROUND_MIN; None when
    the notebook is missing or not stamped yet."""
    if not notebook.exists():
        return None
    nb = json.loads(notebook.read_text())
    wall_s = nb.get("metadata", {}).get("labkit", {}).get("stamp", {}).get("wall_s")
    if wall_s is None:
        return None
    code_chars, prose_chars = code_and_prose_chars(nb)
    minutes = (
        prose_chars / PROSE_CHARS_PER_MIN
        + code_chars / CODE_CHARS_PER_MIN
        + wall_s / 60
    )
    return ROUND_MIN * math.ceil(minutes / ROUND_MIN)


def _link(chapter: str, root: Path) -> str:
    """A `{doc}` link from a page in book/paths/ to a chapter, or plain text when the
    notebook does not exist yet (a broken link fails the book's build)."""
    if (root / f"{chapter}.ipynb").exists():
        return f"{{doc}}`../../{chapter}`"
    return f"`{chapter}` (in preparation)"


def _prerequisites(items: list[str], chapters: set[str], root: Path) -> str:
    return "; ".join(_link(i, root) if i in chapters else i for i in items)


def _fmt_minutes(minutes: int | None) -> str:
    return "not stamped yet" if minutes is None else f"{minutes} min"


TIME_RULE = (
    "**Time to complete** = reading time + running time, rounded up to "
    f"{ROUND_MIN} min. Prose is read at {PROSE_CHARS_PER_MIN:,} characters a minute "
    "(200 words a minute at 5 characters a word, below the 238 words a minute that "
    f"{READING_SOURCE} found for silent reading of non-fiction, because these pages "
    "are technical), code at "
    f"{CODE_CHARS_PER_MIN} characters a minute (our assumption: code is read twice as "
    "slowly), and the running time is the chapter's stamped `laptop` run on a 2-core "
    "machine ({doc}`../execution-report`). Exercises take longer: count them on top."
)


def _track_page(
    track: dict[str, Any], chapters: set[str], root: Path
) -> tuple[str, list[int | None]]:
    minutes = [chapter_minutes(root / f"{c['file']}.ipynb") for c in track["chapters"]]
    lines = [
        f"# {track['title']} ({track['level']})",
        "",
        f"For {track['for']}",
        "",
    ]
    if track.get("after"):
        first = ", ".join(f"{{doc}}`{name}`" for name in track["after"])
        lines += [f"Take {first} first: this track builds on it.", ""]
    lines += [
        "| # | Chapter | After it you can | Prerequisites | Time to complete |",
        "| --- | --- | --- | --- | --- |",
    ]
    for number, (chapter, mins) in enumerate(zip(track["chapters"], minutes), 1):
        lines.append(
            f"| {number} | {_link(chapter['file'], root)} | {chapter['can_do']} | "
            f"{_prerequisites(chapter['prerequisites'], chapters, root)} | "
            f"{_fmt_minutes(mins)} |"
        )
    known = [m for m in minutes if m is not None]
    total = f"**{sum(known)} min**" + (
        f" for the {len(known)} stamped chapters of {len(minutes)}"
        if len(known) < len(minutes)
        else ""
    )
    lines += ["", f"Time to complete the track: {total}.", "", TIME_RULE, ""]
    return "\n".join(lines), minutes


def render_paths(root: Path = ROOT) -> dict[Path, str]:
    """`book/paths/index.md` and one page per track, as MyST Markdown, keyed by path
    relative to `root`."""
    paths = load_paths(root)
    chapters = set(path_chapters(paths))
    pages: dict[Path, str] = {}
    index = [
        "# Learning paths",
        "",
        "Three tracks through the book, from beginner to advanced. Each lists its "
        "chapters in order, what you can do after each one, what to know first, and "
        "the time to complete it; each ends with a self-grading exam.",
        "",
        "| Track | Level | Chapters | Time to complete |",
        "| --- | --- | --- | --- |",
    ]
    for track in paths["tracks"]:
        page, minutes = _track_page(track, chapters, root)
        pages[PATHS_DIR / f"{track['id']}.md"] = page
        known = [m for m in minutes if m is not None]
        stamped = "" if len(known) == len(minutes) else f" ({len(known)} stamped)"
        index.append(
            f"| {{doc}}`{track['id']}` | {track['level']} | {len(minutes)} | "
            f"{sum(known)} min{stamped} |"
        )
    index += [
        "",
        "A chapter may sit on more than one track; every chapter of the book is on at "
        "least one (`tests/test_paths.py` checks it).",
        "",
        TIME_RULE,
        "",
    ]
    pages[PATHS_DIR / "index.md"] = "\n".join(index)
    return pages


def write_paths(root: Path = ROOT) -> list[Path]:
    """Write the rendered pages; return their paths."""
    pages = render_paths(root)
    for path, text in pages.items():
        (root / path).write_text(text)
    return list(pages)
