"""The peel report's JSON schema: reports written before the rows were typed load and write back."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from json_diff import differences
from layerpeel.errors import LayerpeelError
from layerpeel.peel.report import SCHEMA_VERSION, PeelReport
from layerpeel.peel.rows import Cascade, GapRow, LadderRow
from layerpeel.verdict import Verdict

# written by the version before typed rows: fp with attribution, ternary (twins), Adam (eta null)
OLD = sorted((Path(__file__).parent / "data").glob("peel-report-v1-*.json"))


@pytest.mark.parametrize("path", OLD, ids=lambda p: p.stem)
def test_an_earlier_report_loads_typed_and_writes_back_the_same_json(path):
    old = json.loads(path.read_text())
    report = PeelReport.from_dict(old)
    assert all(isinstance(r, GapRow) and isinstance(r.verdict, Verdict) for r in report.layers)
    assert all(isinstance(r, LadderRow) for r in report.ladder)
    assert report.cascade is None or isinstance(report.cascade, Cascade)
    again = report.to_dict()
    assert differences(old, again) == []
    # the same keys in the same order, row by row: scripts see no difference
    assert [list(r) for r in again["layers"]] == [list(r) for r in old["layers"]]
    verdicts = [r["verdict"] for r in again["layers"]]
    assert all(type(v) is str for v in verdicts)  # plain JSON types: the enum as its string


def test_a_report_without_a_version_or_with_unknown_keys_still_loads():
    old = json.loads(OLD[0].read_text())
    del old["format_version"]
    old["layers"][0]["note"] = "added by a script"
    report = PeelReport.from_dict(old)
    assert report.layers[0].extra == {"note": "added by a script"}
    assert report.to_dict()["layers"][0]["note"] == "added by a script"
    assert report.to_dict()["format_version"] == SCHEMA_VERSION


def test_newer_or_broken_reports_are_one_clear_error():
    old = json.loads(OLD[0].read_text())
    with pytest.raises(LayerpeelError, match="newer"):
        PeelReport.from_dict({**old, "format_version": SCHEMA_VERSION + 1})
    del old["layers"][0]["gap"]
    with pytest.raises(LayerpeelError, match="schema"):
        PeelReport.from_dict(old)


def test_verdicts_compare_and_serialise_as_their_strings():
    assert Verdict.RED == "red" and json.dumps([Verdict.YELLOW]) == '["yellow"]'
    assert f"{Verdict.GREEN}" == "green"
    assert sorted(Verdict, key=lambda v: v.rank) == [Verdict.GREEN, Verdict.YELLOW, Verdict.RED]
