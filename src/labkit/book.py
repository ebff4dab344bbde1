"""Execute notebooks into the book and keep their stamps: `python -m labkit.book {execute,report,stale}`.

A stored notebook carries, in `metadata.labkit.stamp`, the hash of its code cells, the lock files and
labkit's sources at the run that produced its outputs, with that run's wall time, date and platform. A
notebook is stale when its stamp no longer matches; `execute` re-runs stale ones (or those named) with
papermill at default parameters, strips volatile metadata, stamps them, and rewrites the execution
report (`book/execution-report.json` and the page `book/execution-report.md`).
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
LOCK_FILES = ("requirements.txt", "requirements-nodeps.txt")
DEFAULT_BUDGET_S = {"laptop": 90, "smoke": 30}
REPORT_JSON = Path("book/execution-report.json")
REPORT_MD = Path("book/execution-report.md")


def toc_files(root: Path = ROOT) -> list[str]:
    """Every `file:` entry of `_toc.yml` (root included), in book order, as written there."""
    import yaml

    toc = yaml.safe_load((root / "_toc.yml").read_text())
    found: list[str] = [toc["root"]] if "root" in toc else []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if "file" in node:
                found.append(str(node["file"]))
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk({k: v for k, v in toc.items() if k != "root"})
    return found


def toc_notebooks(root: Path = ROOT) -> list[Path]:
    """The notebooks `_toc.yml` lists, in book order, as paths relative to `root`."""
    notebooks = []
    for entry in toc_files(root):
        path = Path(entry)
        candidate = path if path.suffix == ".ipynb" else path.with_suffix(".ipynb")
        if (root / candidate).exists():
            notebooks.append(candidate)
    return notebooks


def environment_hash(root: Path = ROOT) -> str:
    """sha256 over the lock files and labkit's sources: what every notebook's outputs depend on."""
    digest = hashlib.sha256()
    for name in LOCK_FILES:
        digest.update(name.encode() + b"\0" + (root / name).read_bytes() + b"\0")
    for source in sorted((root / "src" / "labkit").rglob("*.py")):
        digest.update(str(source.relative_to(root)).encode() + b"\0" + source.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def code_hash(nb: dict[str, Any]) -> str:
    """sha256 over the notebook's code cells' sources."""
    digest = hashlib.sha256()
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            source = cell["source"] if isinstance(cell["source"], str) else "".join(cell["source"])
            digest.update(source.encode() + b"\0")
    return digest.hexdigest()[:16]


def expected_stamp_hash(nb: dict[str, Any], root: Path = ROOT) -> str:
    """The hash a fresh stamp of `nb` would carry now."""
    return f"{code_hash(nb)}-{environment_hash(root)}"


def budget_s(nb: dict[str, Any], profile: str = "laptop") -> float:
    """The notebook's time budget in seconds for `profile` (metadata.labkit.budget_s, else the default)."""
    budgets = {**DEFAULT_BUDGET_S, **nb.get("metadata", {}).get("labkit", {}).get("budget_s", {})}
    return float(budgets[profile])


def is_stale(path: Path, root: Path = ROOT) -> bool:
    """True when the notebook has no stamp or its stamp does not match its code and environment."""
    nb = json.loads((root / path).read_text())
    stamp = nb.get("metadata", {}).get("labkit", {}).get("stamp", {})
    return stamp.get("hash") != expected_stamp_hash(nb, root)


def strip_volatile(nb: dict[str, Any]) -> dict[str, Any]:
    """Drop papermill's and nbclient's timestamps so that diffs show only what changed."""
    nb["metadata"].pop("papermill", None)
    for cell in nb["cells"]:
        cell.get("metadata", {}).pop("papermill", None)
        cell.get("metadata", {}).pop("execution", None)
        if cell["cell_type"] == "code":
            for output in cell.get("outputs", []):
                output.get("metadata", {}).pop("papermill", None)
    return nb


def execute(path: Path, root: Path = ROOT, timeout_s: int = 900) -> dict[str, Any]:
    """Run one notebook in place with papermill at default parameters; strip, stamp, save. Return its stamp."""
    import papermill

    source = root / path
    env_before = dict(os.environ)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / path.name
        start = time.perf_counter()
        try:
            papermill.execute_notebook(
                str(source), str(out), cwd=str(source.parent), kernel_name="python3",
                progress_bar=False, execution_timeout=timeout_s, log_output=False,
            )
        finally:
            os.environ.clear()
            os.environ.update(env_before)
        wall_s = time.perf_counter() - start
        nb = strip_volatile(json.loads(out.read_text()))
    stamp = {
        "hash": expected_stamp_hash(nb, root),
        "wall_s": round(wall_s, 1),
        "profile": "laptop",
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d"),
        "platform": f"{platform.system()} {platform.machine()}, Python {platform.python_version()}, {os.cpu_count()} CPUs",
    }
    nb["metadata"].setdefault("labkit", {})["stamp"] = stamp
    source.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")
    return stamp


def report_rows(root: Path = ROOT) -> list[dict[str, Any]]:
    """One row per toc notebook: wall time against budget, status, date, environment hash."""
    rows = []
    for path in toc_notebooks(root):
        nb = json.loads((root / path).read_text())
        stamp = nb.get("metadata", {}).get("labkit", {}).get("stamp", {})
        budget = budget_s(nb)
        wall = stamp.get("wall_s")
        if is_stale(path, root):
            status = "stale"
        elif wall is None or wall > budget:
            status = "over budget"
        else:
            status = "ok"
        rows.append({
            "notebook": str(path), "wall_s": wall, "budget_s": budget, "status": status,
            "date": stamp.get("date"), "platform": stamp.get("platform"),
            "hash": stamp.get("hash", "").split("-")[-1] if stamp else None,
        })
    return rows


def render_report(rows: list[dict[str, Any]]) -> str:
    """The execution report page as MyST Markdown."""
    lines = [
        "# Execution report",
        "",
        "Every chapter is stored with the outputs of its reference run, made by `make execute` at the",
        "`laptop` profile. This table is written by that command from the stamps in the notebooks; CI",
        "re-runs every notebook (nbval compares the outputs, papermill runs the `smoke` profile) and fails",
        "when a stamp is stale or a time is over its budget.",
        "",
        "| Notebook | Wall time (s) | Budget (s) | Status | Date | Environment hash | Platform |",
        "| --- | ---: | ---: | --- | --- | --- | --- |",
    ]
    for row in rows:
        wall = "–" if row["wall_s"] is None else f"{row['wall_s']:.1f}"
        lines.append(
            f"| `{row['notebook']}` | {wall} | {row['budget_s']:.0f} | {row['status']} | {row['date'] or '–'} "
            f"| `{row['hash'] or '–'}` | {row['platform'] or '–'} |"
        )
    lines += ["", "The environment hash covers `requirements.txt`, `requirements-nodeps.txt` and labkit's sources.", ""]
    return "\n".join(lines)


def write_report(root: Path = ROOT) -> list[dict[str, Any]]:
    """Write book/execution-report.json and book/execution-report.md; return the rows."""
    rows = report_rows(root)
    (root / REPORT_JSON).write_text(json.dumps(rows, indent=1) + "\n")
    (root / REPORT_MD).write_text(render_report(rows))
    return rows


def main(argv: list[str] | None = None) -> int:
    """Command line: execute [NB ...] [--all], report, stale."""
    parser = argparse.ArgumentParser(prog="python -m labkit.book", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("execute", help="re-run stale notebooks (or the ones named) and stamp them")
    run.add_argument("notebooks", nargs="*", type=Path, help="notebooks to run even when not stale")
    run.add_argument("--all", action="store_true", help="re-run every notebook in _toc.yml")
    sub.add_parser("report", help="rewrite the execution report from the stamps")
    sub.add_parser("stale", help="list stale notebooks; exit 1 if any")
    sub.add_parser("list", help="print the notebooks of _toc.yml, one a line")
    args = parser.parse_args(argv)

    if args.command == "execute":
        targets = args.notebooks or [p for p in toc_notebooks() if args.all or is_stale(p)]
        for path in targets:
            path = path.resolve().relative_to(ROOT) if path.is_absolute() or path.exists() else path
            print(f"executing {path} ...", flush=True)
            stamp = execute(path)
            print(f"  {stamp['wall_s']} s", flush=True)
        if not targets:
            print("every notebook is up to date")
        write_report()
        return 0
    if args.command == "report":
        write_report()
        return 0
    if args.command == "list":
        print("\n".join(str(p) for p in toc_notebooks()))
        return 0
    stale = [p for p in toc_notebooks() if is_stale(p)]
    for path in stale:
        print(f"stale: {path}  (run: make execute NB={path})")
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
