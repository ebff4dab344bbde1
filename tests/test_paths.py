"""The learning paths (book/paths/): every chapter is on a track, every link resolves,
and the committed pages are the ones `labkit.paths.render_paths` renders now."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest

from labkit.book import toc_files
from labkit.paths import (
    PATHS_DIR,
    chapter_minutes,
    load_paths,
    path_chapters,
    render_paths,
)

ROOT = Path(__file__).resolve().parents[1]
_DOC_ROLE = re.compile(r"\{doc\}`(?:[^`<]*<)?([^`>]+)>?`")
_MD_LINK = re.compile(r"\]\(([^)\s]+)\)")


def toc_chapters(root: Path = ROOT) -> list[str]:
    """The notebooks `_toc.yml` lists (entries under notebooks/), written or not."""
    return [entry for entry in toc_files(root) if entry.startswith("notebooks/")]


def chapters_off_paths(paths: dict, chapters: list[str]) -> list[str]:
    """The chapters that no track lists."""
    on_paths = set(path_chapters(paths))
    return [chapter for chapter in chapters if chapter not in on_paths]


def unresolved_links(page: Path, text: str, root: Path = ROOT) -> list[str]:
    """The `{doc}` and Markdown links of a page that name no file in the tree."""
    bad = []
    for target in _DOC_ROLE.findall(text) + _MD_LINK.findall(text):
        if re.match(r"[a-z]+://", target):
            continue
        base = root if target.startswith("/") else (root / page).parent
        path = (base / target.lstrip("/").split("#")[0]).resolve()
        candidates = [path, path.with_suffix(".md"), path.with_suffix(".ipynb")]
        if not any(c.is_file() and c.is_relative_to(root) for c in candidates):
            bad.append(target)
    return bad


def test_every_toc_chapter_is_on_a_path():
    missing = chapters_off_paths(load_paths(ROOT), toc_chapters())
    assert not missing, f"add these chapters to book/paths/paths.yml: {missing}"


def test_the_check_fails_when_a_chapter_leaves_every_path():
    paths = copy.deepcopy(load_paths(ROOT))
    chapter = toc_chapters()[0]
    for track in paths["tracks"]:
        track["chapters"] = [c for c in track["chapters"] if c["file"] != chapter]
    assert chapters_off_paths(paths, toc_chapters()) == [chapter]


def test_every_path_chapter_is_in_the_toc():
    unknown = set(path_chapters(load_paths(ROOT))) - set(toc_chapters())
    assert not unknown, f"not in _toc.yml: {sorted(unknown)}"


def test_every_track_is_complete():
    tracks = load_paths(ROOT)["tracks"]
    ids = [track["id"] for track in tracks]
    for track in tracks:
        assert set(track.get("after", [])) <= set(ids[: ids.index(track["id"])])
        name = track.get("id")
        assert {"id", "title", "level", "for", "chapters"} <= set(track), name
        files = [c["file"] for c in track["chapters"]]
        assert files[-1].startswith("notebooks/exams/"), f"{name} ends in an exam"
        assert len(files) == len(set(files)), f"{track['id']} repeats a chapter"
        for chapter in track["chapters"]:
            assert chapter["can_do"].strip() and chapter["prerequisites"], chapter


def test_every_link_resolves():
    pages = render_paths(ROOT)
    assert PATHS_DIR / "index.md" in pages
    for page, text in pages.items():
        assert _DOC_ROLE.search(text), f"{page} has no links"
        assert not unresolved_links(page, text), (page, unresolved_links(page, text))


def test_the_link_check_rejects_a_broken_link():
    page = PATHS_DIR / "index.md"
    assert unresolved_links(page, "{doc}`../../notebooks/no/such-chapter`")
    assert unresolved_links(page, "[x](../no-such-page.md)")
    assert not unresolved_links(page, "{doc}`../execution-report`")


def test_committed_pages_are_current():
    for page, text in render_paths(ROOT).items():
        committed = (ROOT / page).read_text() if (ROOT / page).exists() else None
        assert committed == text, (
            f"{page} is not current: run `make report` (it rewrites book/paths/*.md)"
        )


def test_time_to_complete_rule(tmp_path: Path):
    cell = {"metadata": {}, "source": ""}
    nb = {
        "cells": [
            {**cell, "cell_type": "markdown", "source": "x" * 3000},  # 3 min
            {**cell, "cell_type": "code", "source": "y" * 1000},  # 2 min
        ],
        "metadata": {"labkit": {"stamp": {"wall_s": 90.0}}},  # 1.5 min
    }
    path = tmp_path / "chapter.ipynb"
    path.write_text(json.dumps(nb))
    assert chapter_minutes(path) == 10  # 6.5 min, rounded up to 5
    nb["metadata"]["labkit"]["stamp"]["wall_s"] = 0.0
    path.write_text(json.dumps(nb))
    assert chapter_minutes(path) == 5
    del nb["metadata"]["labkit"]
    path.write_text(json.dumps(nb))
    assert chapter_minutes(path) is None
    assert chapter_minutes(tmp_path / "absent.ipynb") is None


@pytest.mark.parametrize("track", ["foundations", "platform-admin", "ai-architect"])
def test_each_track_has_a_page(track: str):
    assert PATHS_DIR / f"{track}.md" in render_paths(ROOT)
