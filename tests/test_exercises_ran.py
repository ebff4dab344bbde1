"""Every exercise's check ran in this session's nbval run: it rejected the placeholder
and the declared wrong answers (labkit.check_exercise raises before logging otherwise),
said "not solved yet" on the reader's cell, and accepted the reference solution. Run
after the notebooks on the same command line."""

from __future__ import annotations

import json
from pathlib import Path

import nbchecks
import pytest
from conftest import EXERCISE_LOG, NBVAL_RUN

from labkit.book import ROOT


def test_every_exercise_check_ran_and_can_fail(notebook: Path) -> None:
    if str(notebook) not in NBVAL_RUN:
        pytest.skip(f"nbval did not run {notebook} in this session (make test runs it)")
    labels = nbchecks.exercise_labels(nbchecks.load(ROOT / notebook))
    records = [
        json.loads(line) for line in EXERCISE_LOG.read_text().splitlines() if line
    ]
    for label in labels:
        mine = [r for r in records if r["label"] == label]
        reader = [r for r in mine if r["stage"] == "reader"]
        reference = [r for r in mine if r["stage"] == "reference"]
        assert reader and not reader[0]["accepted"], (
            f"{label}: the reader's check did not run on the placeholder"
        )
        assert reader[0]["placeholder_rejected"] and reader[0]["wrong_rejected"] >= 1, (
            label
        )
        assert reference and reference[-1]["accepted"], (
            f"{label}: the reference solution was not checked"
        )
