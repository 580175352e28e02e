"""yes-demo end to end: each task trains a few epochs, writes its run folder, and trackers never rise."""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import pytest

from layerpeel import cli
from layerpeel.commands import yes_demo
from layerpeel.errors import ConfigError
from layerpeel.report import plot_yes_cloud, read_metrics
from layerpeel.yes.paper import TASKS, YesDemoConfig, run_yes_demo

# Enough training samples for m + 1 (m = 100, 20, 64, 100), few enough to be quick.
SMALL = {"synthetic": 140, "denoise": 60, "image": 100, "digits": 140}


def check_run(out: Path, epochs: int) -> list[dict]:
    for name in ("config.json", "metrics.jsonl", "summary.json", "yes_cloud.png", "yes_cloud.svg"):
        assert (out / name).stat().st_size > 0, name
    rows = read_metrics(out / "metrics.jsonl")
    assert [r["epoch"] for r in rows] == list(range(epochs + 1))
    for r in rows:
        assert r["verdict"] in ("red", "yellow", "green")
        chain = [r["yes0_min"], *r["yes_min"]]
        assert all(b <= a for a, b in itertools.pairwise(chain))
        assert len(r["yes"]) == 4
    for a, b in itertools.pairwise(rows):
        assert b["yes0_min"] <= a["yes0_min"]
        assert all(q <= p for p, q in zip(a["yes_min"], b["yes_min"], strict=True))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["verdict"] == rows[-1]["verdict"]
    assert any(note.startswith("[paper]") for note in summary["notes"])
    assert any(note.startswith("[design]") for note in summary["notes"])
    return rows


@pytest.mark.parametrize("task", sorted(TASKS))
def test_each_task_end_to_end(task, tmp_path):
    if task in ("image", "digits"):
        pytest.importorskip("sklearn")
    cfg = YesDemoConfig(task=task, epochs=2, n_samples=SMALL[task], seed=1)
    result = run_yes_demo(cfg, tmp_path / task)
    rows = check_run(tmp_path / task, 2)
    assert result.rows == rows
    if task == "digits":
        assert 0.0 <= rows[-1]["test_accuracy"] <= 1.0


def test_max_anchors_is_recorded(tmp_path):
    cfg = YesDemoConfig(task="denoise", epochs=1, n_samples=60, max_anchors=1)
    rows = run_yes_demo(cfg, tmp_path).rows
    assert all(r["yes"][1:] == [r["yes"][0]] * 3 for r in rows)
    assert json.loads((tmp_path / "config.json").read_text())["max_anchors"] == 1


def test_figure_from_rows(tmp_path):
    rows = [
        {"epoch": e, "train_loss": 10.0 / (e + 1), "yes0_min": 5.0, "yes_min": [3.0, 2.0]}
        for e in range(5)
    ]
    paths = plot_yes_cloud(rows, tmp_path / "fig", title="t")
    assert [p.suffix for p in paths] == [".png", ".svg"]
    assert b"green" in paths[1].read_bytes()  # the legend names the colours in words
    with pytest.raises(ValueError):
        plot_yes_cloud([], tmp_path / "none")


def test_read_metrics_skips_a_torn_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"epoch": 0}\n{"epoch": 1}\n{"epo')
    assert [r["epoch"] for r in read_metrics(path)] == [0, 1]


@pytest.mark.parametrize(
    "bad",
    [
        {"task": "mnist"},
        {"epochs": -1},
        {"n_samples": 5},
        {"max_anchors": -2},
        {"n_layers": 1},
    ],
)
def test_config_errors(bad):
    with pytest.raises(ConfigError):
        YesDemoConfig(**bad).validate()


def parse(argv):
    parser = argparse.ArgumentParser(prog="layerpeel")
    sub = parser.add_subparsers(dest="command", required=True)
    p = yes_demo.add_parser(sub)
    p.set_defaults(_run=yes_demo.run)
    return parser.parse_args(argv)


def test_command_runs_and_prints(tmp_path, capsys):
    out = tmp_path / "run"
    args = parse(
        ["yes-demo", "denoise", "--out", str(out), "--epochs", "1", "--samples", "60"]
        + ["--no-progress", "--max-anchors", "2"]
    )
    assert yes_demo.run(args) == 0
    text = capsys.readouterr().out
    assert "verdict:" in text and "YES-4" in text
    check_run(out, 1)


@pytest.fixture
def wired(monkeypatch):
    """The CLI with yes-demo in its command list (the lead wires it for good)."""
    if "yes_demo" not in cli.COMMANDS:
        monkeypatch.setattr(cli, "COMMANDS", [*cli.COMMANDS, "yes_demo"])


@pytest.mark.parametrize(
    "argv",
    [
        ["yes-demo", "mnist"],
        ["yes-demo", "synthetic", "--epochs", "ten"],
        ["yes-demo", "synthetic", "--epochs", "-3"],
        ["yes-demo", "synthetic", "--samples", "5"],
        ["yes-demo", "synthetic", "--max-anchors", "-1"],
        ["yes-demo", "synthetic", "--threads", "0"],
    ],
)
def test_cli_bad_input_is_one_line_and_exit_2(wired, argv, capsys, tmp_path):
    assert cli.main([*argv, "--out", str(tmp_path / "x"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("layerpeel: error:") and "\n" not in err
    assert not (tmp_path / "x").exists()
