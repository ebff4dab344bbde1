"""Unit tests for labkit, bad inputs included."""

from __future__ import annotations

import json
import os
import re
import sys
import time
from pathlib import Path

import pytest
import yaml
from kubernetes import client

import labkit
from labkit import book


# --- profiles
# -------------------------------------------------------------------------------------
@pytest.mark.parametrize("profile", ["smoke", "laptop", "cluster"])
def test_check_profile_accepts_known_profiles(profile: str) -> None:
    assert labkit.check_profile(profile) == profile


@pytest.mark.parametrize("bad", ["", "Laptop", "gpu", None, 3])
def test_check_profile_names_the_valid_values(bad: object) -> None:
    with pytest.raises(ValueError, match=r"profile=.*'smoke', 'laptop', 'cluster'"):
        labkit.check_profile(bad)  # type: ignore[arg-type]


def test_check_choice() -> None:
    assert labkit.check_choice("mode", "a", ["a", "b"]) == "a"
    with pytest.raises(ValueError, match="mode='c'.*'a', 'b'"):
        labkit.check_choice("mode", "c", ["a", "b"])


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "4", None])
def test_check_positive_rejects(bad: object) -> None:
    with pytest.raises(ValueError, match="positive integer"):
        labkit.check_positive("n", bad)


def test_check_positive_bounds_and_floats() -> None:
    assert labkit.check_positive("n", 4, maximum=4) == 4
    assert labkit.check_positive("rate", 0.5, integer=False) == 0.5
    with pytest.raises(ValueError, match="no larger than 4"):
        labkit.check_positive("n", 5, maximum=4)


def test_pick() -> None:
    sizes = {"smoke": {"n": 1}, "laptop": {"n": 8}, "cluster": {"n": 64}}
    assert labkit.pick("laptop", sizes) == {"n": 8}
    with pytest.raises(ValueError, match="lacks profiles"):
        labkit.pick("laptop", {"laptop": {"n": 8}})
    with pytest.raises(ValueError, match="valid"):
        labkit.pick("huge", sizes)


# --- environment
# ----------------------------------------------------------------------------------
def test_detect_environment_without_cluster(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    info = labkit.detect_environment({"KUBECONFIG": str(tmp_path / "none")})
    assert info["cpus"] >= 1 and info["memory_gib"] > 0
    assert info["ray_address"] is None and info["kubeconfig"] is None
    line = labkit.describe_environment("cluster", info)
    assert "no RAY_ADDRESS" in line and "no Kubernetes config" in line


def test_detect_environment_with_ray_and_kubeconfig(tmp_path: Path) -> None:
    config = tmp_path / "config"
    config.write_text("apiVersion: v1\nkind: Config\n")
    info = labkit.detect_environment(
        {"RAY_ADDRESS": "10.0.0.1:6379", "KUBECONFIG": str(config)}
    )
    assert info["ray_address"] == "10.0.0.1:6379" and info["kubeconfig"] == str(config)
    assert "Ray at 10.0.0.1:6379" in labkit.describe_environment("cluster", info)
    assert "Ray" not in labkit.describe_environment("laptop", info)


# --- measurement
# ----------------------------------------------------------------------------------
def test_summarize() -> None:
    stats = labkit.summarize(
        [5, 1, 4, 2, 3, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20]
    )
    assert stats["median"] == 10.5 and stats["p95"] == 19 and stats["n"] == 20
    assert stats["samples"][0] == 1.0
    with pytest.raises(ValueError):
        labkit.summarize([])


def test_time_calls_warms_up_and_repeats() -> None:
    calls = []
    stats = labkit.time_calls(lambda: calls.append(1), repeats=5, warmup=2)
    assert len(calls) == 7 and stats["n"] == 5 and stats["median"] >= 0
    with pytest.raises(ValueError):
        labkit.time_calls(lambda: None, repeats=0)


# --- Kubernetes
# -----------------------------------------------------------------------------------
def restricted_container(**overrides: object) -> client.V1Container:
    security = client.V1SecurityContext(
        allow_privilege_escalation=False,
        run_as_non_root=True,
        capabilities=client.V1Capabilities(drop=["ALL"]),
        seccomp_profile=client.V1SeccompProfile(type="RuntimeDefault"),
    )
    return client.V1Container(
        name="app", image="nginx:1.27", security_context=security, **overrides
    )


def deployment(container: client.V1Container) -> client.V1Deployment:
    return client.V1Deployment(
        api_version="apps/v1",
        kind="Deployment",
        metadata=client.V1ObjectMeta(name="web"),
        spec=client.V1DeploymentSpec(
            selector=client.V1LabelSelector(match_labels={"app": "web"}),
            template=client.V1PodTemplateSpec(
                metadata=client.V1ObjectMeta(labels={"app": "web"}),
                spec=client.V1PodSpec(containers=[container]),
            ),
        ),
    )


def test_validate_manifest_accepts_a_valid_deployment() -> None:
    manifest = labkit.validate_manifest(deployment(restricted_container()))
    assert (
        manifest["spec"]["template"]["spec"]["containers"][0]["securityContext"][
            "runAsNonRoot"
        ]
        is True
    )
    assert labkit.check_pod_security_restricted(manifest) == []


def test_validate_manifest_is_strict_about_unknown_fields() -> None:
    manifest = labkit.to_dict(deployment(restricted_container()))
    manifest["spec"]["template"]["spec"]["containers"][0]["imagePullPolcy"] = "Always"
    with pytest.raises(ValueError, match="imagePullPolcy"):
        labkit.validate_manifest(manifest)


def test_validate_manifest_rejects_wrong_types_and_unknown_kinds() -> None:
    manifest = labkit.to_dict(deployment(restricted_container()))
    manifest["spec"]["replicas"] = "three"
    with pytest.raises(ValueError, match="replicas"):
        labkit.validate_manifest(manifest)
    with pytest.raises(ValueError, match="validate_custom_resource"):
        labkit.validate_manifest(
            {"apiVersion": "ray.io/v1", "kind": "RayCluster", "metadata": {"name": "r"}}
        )


def test_pod_security_flags_each_violation() -> None:
    bad = labkit.to_dict(deployment(client.V1Container(name="app", image="nginx:1.27")))
    spec = bad["spec"]["template"]["spec"]
    spec["hostNetwork"] = True
    spec["volumes"] = [{"name": "host", "hostPath": {"path": "/"}}]
    problems = "\n".join(labkit.check_pod_security_restricted(bad))
    for expected in (
        "hostNetwork",
        "hostPath",
        "allowPrivilegeEscalation",
        "runAsNonRoot",
        "seccompProfile",
        "capabilities.drop",
    ):
        assert expected in problems


def test_pod_security_pod_level_settings_count() -> None:
    manifest = labkit.to_dict(
        deployment(
            client.V1Container(
                name="app",
                image="nginx:1.27",
                security_context=client.V1SecurityContext(
                    allow_privilege_escalation=False,
                    capabilities=client.V1Capabilities(drop=["ALL"]),
                ),
            ),
        )
    )
    manifest["spec"]["template"]["spec"]["securityContext"] = {
        "runAsNonRoot": True,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    assert labkit.check_pod_security_restricted(manifest) == []
    manifest["spec"]["template"]["spec"]["containers"][0]["securityContext"][
        "capabilities"
    ]["add"] = ["SYS_ADMIN"]
    assert any("SYS_ADMIN" in p for p in labkit.check_pod_security_restricted(manifest))


def test_validate_custom_resource() -> None:
    pod_spec = labkit.to_dict(deployment(restricted_container()))["spec"]["template"][
        "spec"
    ]
    cr = {
        "apiVersion": "ray.io/v1",
        "kind": "RayCluster",
        "metadata": {"name": "demo"},
        "spec": {"headGroupSpec": {"template": {"spec": pod_spec}}},
    }
    assert labkit.validate_custom_resource(cr, required=["spec.headGroupSpec"]) == cr
    with pytest.raises(ValueError, match="workerGroupSpecs"):
        labkit.validate_custom_resource(cr, required=["spec.workerGroupSpecs"])
    with pytest.raises(ValueError, match="DNS-1123"):
        labkit.validate_custom_resource({**cr, "metadata": {"name": "Bad_Name"}})
    with pytest.raises(ValueError, match="needs a group"):
        labkit.validate_custom_resource({**cr, "apiVersion": "v1"})
    broken = json.loads(json.dumps(cr))
    broken["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["imag"] = "x"
    with pytest.raises(
        ValueError, match="pod template at .spec.headGroupSpec.template.spec"
    ):
        labkit.validate_custom_resource(broken)


def test_validate_custom_resource_pod_spec_extra_keys() -> None:
    pod_spec = labkit.to_dict(deployment(restricted_container()))["spec"]["template"][
        "spec"
    ]
    isvc = {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": {"name": "demo"},
        "spec": {
            "predictor": {"minReplicas": 1, "scaleMetric": "concurrency", **pod_spec}
        },
    }
    with pytest.raises(ValueError, match="minReplicas"):
        labkit.validate_custom_resource(isvc)
    extra = ["minReplicas", "scaleMetric"]
    assert labkit.validate_custom_resource(isvc, pod_spec_extra_keys=extra) == isvc
    isvc["spec"]["predictor"]["containers"][0]["imag"] = (
        "x"  # a typo in the pod spec still fails
    )
    with pytest.raises(ValueError, match="imag"):
        labkit.validate_custom_resource(isvc, pod_spec_extra_keys=extra)


def test_start_server_waits_and_stops_the_process_group(tmp_path: Path) -> None:
    port = labkit.free_port()
    server = labkit.start_server(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
        ready_url=f"http://127.0.0.1:{port}/",
        log_path=tmp_path / "http.log",
        cwd=tmp_path,
        timeout_s=20,
    )
    assert server.poll() is None
    labkit.stop_server(server)
    assert server.poll() is not None
    with pytest.raises(RuntimeError, match="(?s)exited with code 3.*boom"):
        labkit.start_server(
            [sys.executable, "-c", "import sys; print('boom'); sys.exit(3)"],
            ready_url=f"http://127.0.0.1:{labkit.free_port()}/",
            log_path=tmp_path / "bad.log",
        )


def test_write_manifests_round_trips(tmp_path: Path) -> None:
    path = labkit.write_manifests(
        [
            deployment(restricted_container()),
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "ai"}},
        ],
        tmp_path / "out" / "all.yaml",
    )
    docs = list(yaml.safe_load_all(path.read_text()))
    assert [d["kind"] for d in docs] == ["Deployment", "Namespace"]
    for doc in docs:
        labkit.validate_manifest(doc)
    with pytest.raises(ValueError):
        labkit.write_manifests([], tmp_path / "empty.yaml")


# --- glue
# --------------------------------------------------------------------------------
def test_glue_number_casts_numpy_scalars(monkeypatch: pytest.MonkeyPatch) -> None:
    import myst_nb
    import numpy as np

    glued = {}
    monkeypatch.setattr(
        myst_nb, "glue", lambda name, value, display: glued.__setitem__(name, value)
    )
    assert labkit.glue_number("speedup", np.float64(3.25)) == 3.25
    assert labkit.glue_number("count", np.int64(16)) == 16
    assert type(glued["speedup"]) is float and type(glued["count"]) is int
    with pytest.raises(ValueError, match="finite"):
        labkit.glue_number("bad", float("nan"))


# --- book: stamps and report
# ----------------------------------------------------------------------
def test_code_hash_ignores_outputs_and_markdown_but_not_code() -> None:
    nb = {
        "cells": [
            {"cell_type": "code", "source": "x = 1", "outputs": []},
            {"cell_type": "markdown", "source": "# title"},
        ]
    }
    same = {
        "cells": [
            {"cell_type": "code", "source": ["x = ", "1"], "outputs": [{"text": "1"}]},
            {"cell_type": "markdown", "source": "# other title"},
        ]
    }
    changed = {"cells": [{"cell_type": "code", "source": "x = 2", "outputs": []}]}
    assert book.code_hash(nb) == book.code_hash(same) != book.code_hash(changed)


def test_budget_defaults_and_override() -> None:
    assert book.budget_s({"metadata": {}}) == 90
    assert book.budget_s({"metadata": {}}, "smoke") == 30
    assert book.budget_s({"metadata": {"labkit": {"budget_s": {"laptop": 150}}}}) == 150


def test_strip_volatile_drops_timestamps() -> None:
    nb = {
        "metadata": {"papermill": {"start_time": "t"}},
        "cells": [
            {
                "cell_type": "code",
                "metadata": {"papermill": {}, "execution": {}, "tags": ["x"]},
                "outputs": [{"metadata": {"papermill": {}}}],
            }
        ],
    }
    stripped = book.strip_volatile(nb)
    assert "papermill" not in stripped["metadata"]
    assert stripped["cells"][0]["metadata"] == {"tags": ["x"]}
    assert stripped["cells"][0]["outputs"][0]["metadata"] == {}


def test_render_report_lists_each_row_and_the_projection() -> None:
    row = {
        "notebook": "a.ipynb",
        "wall_s": 12.34,
        "budget_s": 90.0,
        "smoke_wall_s": 5.0,
        "smoke_budget_s": 30.0,
        "status": "ok",
        "compared": 3,
        "with_output": 4,
        "code_chars": 2000,
        "prose_chars": 3000,
        "ci": {"nbval": 20.0},
        "cpu_s": 9.04,
        "peak_rss_mib": 512,
        "peak_pss_mib": 400,
        "date": "2026-01-01",
        "platform": "Linux",
        "hash": "abc",
    }
    timings = {
        "date": "2026-01-02",
        "machine": "Linux x86_64, 2 CPUs",
        "total_s": 600.0,
        "setup_s": 300.0,
        "notebooks": {
            "a.ipynb": {"nbval": 20.0, "bad_profile": 4.0},
            "b.ipynb": {"nbval": 40.0, "smoke": 60.0},
        },
    }
    text = book.render_report([row], timings)
    assert (
        "| `a.ipynb` | 12.3 | 90 | 5.0 | 30 | ok | 9 | 400 / 512 | 3/4 (75%) "
        "| 2.0 / 3.0 | 20.0 | – |" in text
    )
    assert "nbval compares 3 of 4 output cells (75%) book-wide." in text
    projection = book.ci_projection(timings, chapters=35)
    assert projection["mean_chapter_s"] == 62.0 and projection["fixed_s"] == 476.0
    assert projection["projected_min"] == (476.0 + 35 * 62.0 + 300.0) / 60


SMOKE = "tests/test_smoke.py"


def test_ci_timings_groups_durations_per_notebook() -> None:
    run = {
        "date": "d",
        "machine": "m",
        "total_s": 100.0,
        "durations": {
            "notebooks/a.ipynb::Cell 0": 2.0,
            "notebooks/a.ipynb::Cell 1": 3.0,
            f"{SMOKE}::test_smoke_profile_within_budget[notebooks/a.ipynb]": 10.0,
            f"{SMOKE}::test_bad_profile_names_the_valid_values[notebooks/a.ipynb]": 1.5,
            "tests/test_book.py::test_book_builds_with_every_page": 50.0,
        },
    }
    timings = book.ci_timings(run, setup_s=60)
    assert timings["notebooks"] == {
        "notebooks/a.ipynb": {"nbval": 5.0, "smoke": 10.0, "bad_profile": 1.5}
    }
    assert timings["total_s"] == 100.0 and timings["setup_s"] == 60


def test_compared_cells_and_sizes() -> None:
    nb = {
        "cells": [
            {
                "cell_type": "code",
                "source": "print(1)",
                "outputs": [{"output_type": "stream"}],
            },
            {
                "cell_type": "code",
                "source": "# NBVAL_IGNORE_OUTPUT\nprint(t)",
                "outputs": [{}],
            },
            {"cell_type": "code", "source": "x = 1", "outputs": []},
            {"cell_type": "markdown", "source": "prose!"},
        ]
    }
    assert book.compared_cells(nb) == (1, 2)
    assert book.code_and_prose_chars(nb) == (8 + 30 + 5, 6)


def _notebook(path: Path, code: list[str], metadata: dict | None = None) -> None:
    cells = [
        {
            "cell_type": "code",
            "source": c,
            "metadata": {},
            "outputs": [],
            "execution_count": None,
        }
        for c in code
    ]
    path.write_text(
        json.dumps(
            {
                "cells": cells,
                "metadata": {"labkit": metadata or {}},
                "nbformat": 4,
                "nbformat_minor": 5,
            }
        )
    )


def _tiny_book(root: Path) -> None:
    (root / "src" / "labkit").mkdir(parents=True)
    (root / "src" / "labkit" / "x.py").write_text("X = 1\n")
    for name in book.LOCK_FILES:
        (root / name).write_text("numpy==2.0.0\n")
    part = root / "notebooks" / "part"
    (part / "manifests" / "a").mkdir(parents=True)
    (part / "shared.py").write_text("from inner import thing\n")
    (part / "inner.py").write_text("thing = 1\n")
    (part / "other.py").write_text("y = 2\n")
    (part / "rules.yaml").write_text("a: 1\n")
    (part / "manifests" / "a" / "out.yaml").write_text("kind: x\n")
    _notebook(
        part / "a.ipynb",
        ["import shared\nopen('rules.yaml')", "write('manifests/a/out.yaml')"],
    )
    _notebook(part / "b.ipynb", ["import other"])
    _notebook(
        part / "c.ipynb",
        ["import json"],
        {"tools": {"no-such-tool-xyz": "skips a part"}},
    )


def test_helper_files_follow_imports_and_read_files_but_not_outputs(
    tmp_path: Path,
) -> None:
    _tiny_book(tmp_path)
    found = book.helper_files(Path("notebooks/part/a.ipynb"), tmp_path)
    assert [str(p) for p in found] == [
        "notebooks/part/inner.py",
        "notebooks/part/rules.yaml",
        "notebooks/part/shared.py",
    ]
    assert [
        str(p) for p in book.helper_files(Path("notebooks/part/c.ipynb"), tmp_path)
    ] == []


def test_helper_files_follow_another_parts_modules(tmp_path: Path) -> None:
    _tiny_book(tmp_path)
    later = tmp_path / "notebooks" / "later"
    later.mkdir()
    (later / "own.py").write_text("z = 1\n")
    _notebook(
        later / "d.ipynb",
        ['labkit.use_chapter_modules("part")', "import shared, own, other_thing"],
    )
    found = book.helper_files(Path("notebooks/later/d.ipynb"), tmp_path)
    assert [str(p) for p in found] == [
        "notebooks/later/own.py",
        "notebooks/part/inner.py",  # imported by shared.py, beside it
        "notebooks/part/shared.py",
    ]
    # Without the call, another part's modules are not followed.
    _notebook(later / "e.ipynb", ["import shared"])
    assert book.helper_files(Path("notebooks/later/e.ipynb"), tmp_path) == []


def test_use_chapter_modules_names_the_parts_when_wrong() -> None:
    folder = labkit.use_chapter_modules("observability")
    assert str(folder) in sys.path and (folder / "shopapp.py").is_file()
    with pytest.raises(ValueError, match="observability"):
        labkit.use_chapter_modules("no-such-part")


def test_editing_a_helper_module_makes_exactly_its_notebooks_stale(
    tmp_path: Path,
) -> None:
    _tiny_book(tmp_path)
    names = ["a", "b", "c"]
    for name in names:  # stamp each as fresh
        path = tmp_path / "notebooks" / "part" / f"{name}.ipynb"
        nb = json.loads(path.read_text())
        rel = path.relative_to(tmp_path)
        nb["metadata"]["labkit"]["stamp"] = {
            "hash": book.expected_stamp_hash(nb, tmp_path, rel)
        }
        path.write_text(json.dumps(nb))

    def stale() -> list[str]:
        part = Path("notebooks/part")
        return [n for n in names if book.is_stale(part / f"{n}.ipynb", tmp_path)]

    assert stale() == []
    (tmp_path / "notebooks" / "part" / "inner.py").write_text(
        "thing = 2\n"
    )  # imported through shared.py
    assert stale() == ["a"]
    (tmp_path / "notebooks" / "part" / "manifests" / "a" / "out.yaml").write_text(
        "kind: y\n"
    )  # an output
    (tmp_path / "notebooks" / "part" / "other.py").write_text("y = 3\n")
    assert stale() == ["a", "b"]


def test_classroom_tooling_stales_only_the_notebooks_that_import_it(
    tmp_path: Path,
) -> None:
    """labkit.hub, .exams and .paths stay out of the environment hash; a notebook
    that imports one of them goes stale when it changes, and only that notebook."""
    _tiny_book(tmp_path)
    part = tmp_path / "notebooks" / "part"
    _notebook(part / "d.ipynb", ["from labkit import hub\nimport labkit"])
    names = ["a", "b", "c", "d"]
    (tmp_path / "src" / "labkit" / "hub.py").write_text("PORT = 1\n")
    for name in names:
        path = part / f"{name}.ipynb"
        nb = json.loads(path.read_text())
        rel = path.relative_to(tmp_path)
        nb["metadata"]["labkit"]["stamp"] = {
            "hash": book.expected_stamp_hash(nb, tmp_path, rel)
        }
        path.write_text(json.dumps(nb))

    def stale() -> list[str]:
        return [
            n
            for n in names
            if book.is_stale(Path("notebooks/part") / f"{n}.ipynb", tmp_path)
        ]

    env = book.environment_hash(tmp_path)
    (tmp_path / "src" / "labkit" / "hub.py").write_text("PORT = 2\n")
    assert book.environment_hash(tmp_path) == env
    assert stale() == ["d"]
    (tmp_path / "src" / "labkit" / "x.py").write_text("X = 2\n")  # plumbing
    assert stale() == names


def test_a_chapter_that_reads_the_stamps_goes_stale_with_them(tmp_path: Path) -> None:
    _tiny_book(tmp_path)
    part = tmp_path / "notebooks" / "part"
    _notebook(part / "lab.ipynb", ["import json"], {"reads_stamps": True})
    (tmp_path / "_toc.yml").write_text(
        "format: jb-book\nroot: notebooks/part/lab\nchapters:\n"
        "- file: notebooks/part/a\n"
    )
    rel = Path("notebooks/part/lab.ipynb")
    before = book.local_hash(rel, tmp_path)
    nb = json.loads((part / "a.ipynb").read_text())
    nb["metadata"]["labkit"]["stamp"] = {"hash": "x", "date": "2026-12-01"}
    (part / "a.ipynb").write_text(json.dumps(nb))
    assert book.local_hash(rel, tmp_path) == before  # no measurement changed
    nb["metadata"]["labkit"]["stamp"]["peak_rss_mib"] = 512
    (part / "a.ipynb").write_text(json.dumps(nb))
    assert book.local_hash(rel, tmp_path) != before


def test_a_page_that_tables_tool_declarations_goes_stale_with_them(
    tmp_path: Path,
) -> None:
    _tiny_book(tmp_path)
    (tmp_path / "_toc.yml").write_text(
        "format: jb-book\nroot: notebooks/part/a\nchapters:\n"
        "- file: notebooks/part/b\n- file: notebooks/part/c\n"
    )
    page = tmp_path / "notebooks/part/a.ipynb"
    nb = json.loads(page.read_text())
    nb["metadata"]["labkit"]["reads_tool_declarations"] = True
    page.write_text(json.dumps(nb))
    before = book.local_hash(Path("notebooks/part/a.ipynb"), tmp_path)
    other = tmp_path / "notebooks/part/b.ipynb"
    nb_b = json.loads(other.read_text())
    nb_b["metadata"]["labkit"]["tools"] = {"promtool": "skips the rule tests"}
    other.write_text(json.dumps(nb_b))
    assert book.local_hash(Path("notebooks/part/a.ipynb"), tmp_path) != before


def test_declared_tool_versions_enter_the_stamp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _tiny_book(tmp_path)
    rel = Path("notebooks/part/c.ipynb")
    assert book.tool_version("no-such-tool-xyz") == "missing"
    before = book.local_hash(rel, tmp_path)
    monkeypatch.setattr(book, "tool_version", lambda tool: "no-such-tool-xyz 2.0")
    assert book.local_hash(rel, tmp_path) != before


# --- exercises
# ------------------------------------------------------------------------------------
def _check_two(answer: object) -> None:
    assert answer == 2, f"{answer!r} is not two"


def test_check_exercise_on_the_placeholder_says_not_solved_and_does_not_raise(
    capsys: pytest.CaptureFixture[str],
) -> None:
    labkit.check_exercise("t-ex", _check_two, ..., wrong=[3], hint="one plus one")
    assert labkit.exercises.RECORDS[-1]["accepted"] is False
    out = capsys.readouterr().out
    assert (
        "not solved yet" in out
        and "hint: one plus one" in out
        and "1 plausible wrong" in out
    )


def test_check_exercise_reports_a_wrong_answer_and_accepts_a_right_one(
    capsys: pytest.CaptureFixture[str],
) -> None:
    labkit.check_exercise("t-ex", _check_two, 5, wrong=[3], hint="h")
    assert labkit.exercises.RECORDS[-1]["accepted"] is False
    assert "not yet right: 5 is not two" in capsys.readouterr().out
    labkit.check_exercise("t-ex", _check_two, 2, wrong=[3], hint="h", reference=True)
    assert labkit.exercises.RECORDS[-1]["accepted"] is True
    assert "✓ t-ex: solved." in capsys.readouterr().out


def test_check_exercise_proves_the_check_can_fail() -> None:
    with pytest.raises(labkit.ExerciseDefect, match="accepts the wrong answer"):
        labkit.check_exercise("t-ex", _check_two, ..., wrong=[2], hint="h")
    with pytest.raises(labkit.ExerciseDefect, match="accepts the placeholder"):
        labkit.check_exercise("t-ex", lambda a: None, ..., wrong=[1], hint="h")
    with pytest.raises(labkit.ExerciseDefect, match="reference solution is rejected"):
        labkit.check_exercise(
            "t-ex", _check_two, 4, wrong=[3], hint="h", reference=True
        )
    with pytest.raises(ValueError, match="wrong answer"):
        labkit.check_exercise("t-ex", _check_two, 2, wrong=[], hint="h")


def test_check_exercise_for_a_function_and_its_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    log = tmp_path / "log.jsonl"
    monkeypatch.setenv("LABKIT_EXERCISE_LOG", str(log))

    def double(x: int) -> int:
        raise NotImplementedError

    def check(f: object) -> None:
        assert f(3) == 6, "f(3) should be 6"  # type: ignore[operator]

    labkit.check_exercise(
        "f-ex",
        check,
        double,
        wrong=[lambda x: x + 2],
        hint="h",
        placeholder=labkit.not_implemented,
    )
    assert "write the function body" in capsys.readouterr().out
    labkit.check_exercise(
        "f-ex",
        check,
        lambda x: 2 * x,
        wrong=[lambda x: x + 2],
        hint="h",
        placeholder=labkit.not_implemented,
        reference=True,
    )
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert [(r["stage"], r["accepted"]) for r in records] == [
        ("reader", False),
        ("reference", True),
    ]


def test_glue_table_lists_every_glued_number(monkeypatch: pytest.MonkeyPatch) -> None:
    import IPython.display
    import myst_nb

    from labkit import glue

    shown = []
    monkeypatch.setattr(IPython.display, "display", shown.append)
    monkeypatch.setattr(myst_nb, "glue", lambda name, value, display: None)
    monkeypatch.setattr(glue, "GLUED", {})
    with pytest.raises(ValueError, match="nothing was glued"):
        labkit.glue_table()
    labkit.glue_number("speedup", 3.14159)
    labkit.glue_number("count", 16)
    assert labkit.glue_table() is None
    text = shown[-1].data
    assert "| `speedup` | 3.142 |" in text and "| `count` | 16 |" in text


def test_output_dir_defaults_beside_the_notebook_and_follows_the_tests(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("LABKIT_OUTPUT_ROOT", raising=False)
    assert labkit.output_dir("mec-5g") == Path("manifests/mec-5g")
    monkeypatch.setenv("LABKIT_OUTPUT_ROOT", str(tmp_path / "out"))
    assert (
        labkit.output_dir("mec-5g") == tmp_path / "out" / "mec-5g"
        and (tmp_path / "out" / "mec-5g").is_dir()
    )
    with pytest.raises(ValueError, match="not valid"):
        labkit.output_dir("../escape")


# --- Ray on loopback
# ------------------------------------------------------------------------------
def test_local_head_falls_back_to_127_0_0_1_where_127_0_0_2_is_not_configured() -> None:
    from labkit.ray_local import local_head_ip

    assert local_head_ip(lambda ip: True) == ("127.0.0.2", "")
    ip, note = local_head_ip(lambda ip: ip == "127.0.0.1")
    assert (
        ip == "127.0.0.1" and "127.0.0.2 is not configured" in note and "\n" not in note
    )


def test_loopback_node_ips_stay_in_the_loopback_range_and_avoid_127_0_0_1() -> None:
    import ipaddress

    ips = [labkit.loopback_node_ip(i) for i in range(5)]
    assert ips[0] == labkit.LOOPBACK_HEAD_IP == "127.0.0.2"
    assert (
        all(ipaddress.ip_address(ip).is_loopback for ip in ips)
        and "127.0.0.1" not in ips
    )
    assert len(set(ips)) == 5
    with pytest.raises(ValueError):
        labkit.loopback_node_ip(-1)


def test_describe_environment_without_ray_speaks_only_of_kubernetes(
    tmp_path: Path,
) -> None:
    info = labkit.detect_environment({"KUBECONFIG": str(tmp_path / "none")})
    line = labkit.describe_environment(
        "cluster", {**info, "kubeconfig": None}, uses_ray=False
    )
    assert "Ray" not in line and "no Kubernetes config" in line


def test_edge_deployment_is_valid_restricted_and_pinned_to_edge_nodes() -> None:
    for runtime in labkit.EDGE_RUNTIMES:
        deployment_ = labkit.edge_deployment(
            "camera-counter",
            "ghcr.io/example/counter:1.0",
            cpu_millicores=250,
            memory_mib=128,
            runtime=runtime,
            port=8080,
            model_config_map="model",
        )
        manifest = labkit.validate_manifest(deployment_)
        assert labkit.check_pod_security_restricted(deployment_) == []
        spec = manifest["spec"]["template"]["spec"]
        assert spec["tolerations"][0]["key"] == "node-role.kubernetes.io/edge"
        assert ("nodeSelector" in spec) == (runtime == "k3s") and (
            "affinity" in spec
        ) == (runtime == "kubeedge")
        resources = spec["containers"][0]["resources"]
        assert (
            resources["requests"]
            == resources["limits"]
            == {"cpu": "250m", "memory": "128Mi"}
        )
    with pytest.raises(ValueError, match="k3s, kubeedge"):
        labkit.edge_deployment(
            "x", "y:1", cpu_millicores=1, memory_mib=1, runtime="k8s"
        )


def test_size_resources() -> None:
    # 4 ms a frame at 25 frames/s is 100 ms of CPU a second: 100 millicores, 150 with
    # 1.5x headroom.
    assert labkit.size_resources(4, 25, peak_rss_mib=100) == {
        "cpu_millicores": 150,
        "memory_mib": 150,
    }
    assert labkit.size_resources(0.1, 1, peak_rss_mib=1) == {
        "cpu_millicores": 50,
        "memory_mib": 32,
    }
    with pytest.raises(ValueError):
        labkit.size_resources(0, 25, peak_rss_mib=100)


def test_export_and_quantize_onnx_keep_the_model_s_answers(tmp_path: Path) -> None:
    import numpy as np
    import torch

    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(64, 256), torch.nn.ReLU(), torch.nn.Linear(256, 4)
    )
    path = labkit.export_onnx(model, torch.randn(1, 64), tmp_path / "mlp.onnx")
    assert not (tmp_path / "mlp.onnx.data").exists()  # weights inside the one file
    inputs = np.random.default_rng(0).standard_normal((32, 64)).astype(np.float32)
    expected = model(torch.from_numpy(inputs)).detach().numpy()
    for variant in (
        path,
        labkit.quantize_onnx_int8(path, tmp_path / "dynamic.onnx"),
        labkit.quantize_onnx_int8(path, tmp_path / "static.onnx", [{"input": inputs}]),
    ):
        session = labkit.onnx_session(variant)
        got = session.run(None, {"input": inputs})[0]
        assert got.shape == (32, 4) and np.abs(got - expected).max() < 0.05, (
            variant.name
        )
        assert (
            labkit.onnx_latency_ms(session, {"input": inputs[:1]}, repeats=3, warmup=1)[
                "n"
            ]
            == 3
        )
    assert (tmp_path / "dynamic.onnx").stat().st_size < path.stat().st_size / 2.5


def test_summarize_reports_nearest_rank_tail() -> None:
    stats = labkit.summarize(list(range(1, 201)))
    assert (stats["p95"], stats["p99"], stats["median"]) == (190.0, 198.0, 100.5)


def test_load_manifests_reads_every_document(tmp_path) -> None:
    path = tmp_path / "two.yaml"
    path.write_text("kind: A\n---\n---\nkind: B\n")
    assert [d["kind"] for d in labkit.load_manifests(path)] == ["A", "B"]
    (tmp_path / "empty.yaml").write_text("---\n")
    with pytest.raises(ValueError, match="no YAML document"):
        labkit.load_manifests(tmp_path / "empty.yaml")


def test_find_tool_looks_in_sbin(monkeypatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    assert labkit.find_tool("definitely-not-a-tool") is None
    daemons = sorted(p for p in Path("/usr/sbin").iterdir() if os.access(p, os.X_OK))
    assert daemons, "a Linux or macOS system has programs in /usr/sbin"
    assert labkit.find_tool(daemons[0].name) == str(daemons[0])


def test_pin_kernels_refuses_after_torch(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "torch", object())
    with pytest.raises(RuntimeError, match="before `import torch`"):
        labkit.pin_kernels()


def test_merged_ci_timings_keep_the_full_runs_fixed_cost() -> None:
    old = {
        "date": "d1",
        "machine": "m",
        "total_s": 100.0,
        "setup_s": 50.0,
        "notebooks": {"a.ipynb": {"nbval": 20.0}, "b.ipynb": {"nbval": 30.0}},
    }
    new = {
        "date": "d2",
        "machine": "m",
        "total_s": 45.0,
        "setup_s": 0.0,
        "notebooks": {"b.ipynb": {"nbval": 10.0}, "c.ipynb": {"nbval": 5.0}},
    }
    merged = book.merge_ci_timings(old, new)
    assert merged["notebooks"] == {
        "a.ipynb": {"nbval": 20.0},
        "b.ipynb": {"nbval": 10.0},
        "c.ipynb": {"nbval": 5.0},
    }
    assert merged["total_s"] == 50.0 + 35.0  # the fixed cost plus the chapters
    assert merged["setup_s"] == 50.0
    text = book.render_report([], merged)
    assert "combine two runs" in text and "`b`, `c`" in text


def test_custom_resources_are_checked_against_their_published_crd_schema() -> None:
    rayjob = {
        "apiVersion": "ray.io/v1",
        "kind": "RayJob",
        "metadata": {"name": "demo"},
        "spec": {"entrypoint": "python train.py", "shutdownAfterJobFinishes": True},
    }
    assert labkit.validate_custom_resource(rayjob) == rayjob
    # An unknown field fails, at any depth, as kubeconform -strict rejects it.
    for path in (("spec",), ()):
        typo = json.loads(json.dumps(rayjob))
        node = typo
        for part in path:
            node = node[part]
        node["shutdownAfterJobFinish"] = True
        with pytest.raises(ValueError, match="shutdownAfterJobFinish' was unexpected"):
            labkit.validate_custom_resource(typo)
    # A wrong type fails, and the message names the schema's source and commit.
    wrong = {**rayjob, "spec": {**rayjob["spec"], "shutdownAfterJobFinishes": "yes"}}
    with pytest.raises(ValueError, match=r"ray-project/kuberay@[0-9a-f]{7} \(20"):
        labkit.validate_custom_resource(wrong)
    # A kind whose schema is not vendored cannot pass unchecked.
    with pytest.raises(ValueError, match="no published CRD schema vendored"):
        labkit.validate_custom_resource({**rayjob, "kind": "RayJobs"})


def test_vendored_crd_schemas_name_their_source_and_licence() -> None:
    from labkit.k8s import CRD_ROOT

    sources = json.loads((CRD_ROOT / "SOURCES.json").read_text())
    files = {
        str(p.relative_to(CRD_ROOT)) for p in CRD_ROOT.glob("*/*.json") if p.is_file()
    }
    assert files == set(sources)
    for key, source in sources.items():
        assert re.fullmatch(r"[0-9a-f]{40}", source["commit"]), key
        licence = (
            CRD_ROOT
            / "licenses"
            / (source["repository"].replace("/", "+") + ".LICENSE")
        )
        assert licence.read_text().strip(), key
        # Strict where the project publishes fields: the spec is closed.
        schema = json.loads((CRD_ROOT / key).read_text())
        spec = schema.get("properties", {}).get("spec", {})
        refs = [spec.get("$ref")] + [s.get("$ref") for s in spec.get("allOf", [])]
        for ref in filter(None, refs):
            spec = schema["definitions"][ref.removeprefix("#/definitions/")]
        open_by_design = schema.get("x-kubernetes-preserve-unknown-fields")
        assert open_by_design or spec.get("additionalProperties") is False, key


def test_resource_meter_counts_orphans_cpu_and_a_childs_memory() -> None:
    """The execution report's CPU and memory columns: a grandchild orphaned by its
    parent still counts (subreaper), and a child's 300 MiB shows in the peak."""
    import subprocess

    import psutil

    busy = "import time; t = time.process_time()\n"
    busy += "while time.process_time() - t < 1.0: pass"
    hold = "import time; b = bytearray(300 * 2**20)\n"
    hold += "b[::4096] = b'x' * len(b[::4096]); time.sleep(1.0)"
    with book.ResourceMeter() as meter:
        # the shell exits at once; its busy child is orphaned and handed to us
        subprocess.run(["sh", "-c", f'{sys.executable} -c "{busy}" &'], check=True)
        subprocess.run([sys.executable, "-c", hold], check=True)
        deadline = time.time() + 10  # the orphan ends, and waits as our zombie
        while time.time() < deadline and any(
            p.status() != psutil.STATUS_ZOMBIE
            for p in psutil.Process().children(recursive=True)
        ):
            time.sleep(0.1)
    stamp = meter.as_stamp()
    assert 1.0 <= stamp["cpu_s"] < 3.0, stamp
    assert 300 <= stamp["peak_rss_mib"] < 400, stamp
    assert 280 <= stamp["peak_pss_mib"] <= stamp["peak_rss_mib"], stamp
