"""`layerpeel train` monitors by default; saved checkpoints fill the same time series afterwards."""

from __future__ import annotations

import json

from layerpeel.cli import main
from layerpeel.monitor import analyze_checkpoints, read_events
from layerpeel.peel.evidence import loss_trend


def train_cli(tmp_path, corpus, *extra):
    args = [
        "train",
        "--out",
        tmp_path / "run",
        "--data",
        corpus,
        "--n-layer",
        "2",
        "--d-model",
        "16",
        "--n-head",
        "2",
        "--block-size",
        "16",
        "--batch-size",
        "4",
        "--max-steps",
        "12",
        "--checkpoint-every",
        "6",
        "--no-progress",
        *extra,
    ]
    return main([str(a) for a in args])


def test_train_monitors_by_default_and_checkpoints_fill_the_series(tmp_path, tiny_corpus, capsys):
    code = train_cli(
        tmp_path,
        tiny_corpus,
        "--monitor-warmup",
        "3",
        "--monitor-budget",
        "10",
        "--monitor-preset",
        "economy",
        "--monitor-loggers",
        "csv",
    )
    assert code == 0
    out = capsys.readouterr().out
    run = tmp_path / "run"
    events = read_events(run / "monitor.jsonl")
    analyses = [e for e in events if e["event"] == "analysis"]
    assert len(analyses) == len(events)  # no error events
    assert analyses and all(e["source"] == "monitor" for e in analyses)
    assert analyses[0]["step"] == 3 and analyses[0]["unit"] == "sweep"
    rows = analyses[0]["report"]["layers"]
    assert {(r["block"], r["part"]) for r in rows} == {
        (b, p) for b in (0, 1) for p in ("block", "attn", "mlp")
    }
    assert all(e["overhead"] >= 0 and e["preset"] == "economy" for e in analyses)
    assert "monitor: " in out and f"{len(analyses)} analyses" in out
    assert (run / "monitor.csv").read_text().startswith("step,tag,value")
    config = json.loads((run / "config.json").read_text())
    assert config["monitor"]["preset"] == "economy"

    # the run's loss log replaced by one row per step, falling as 1/step
    rows = [(step, 3.0 + 6.0 / step) for step in range(1, 13)]
    (run / "metrics.jsonl").write_text(
        "".join(json.dumps({"step": s, "train_loss": v}) + "\n" for s, v in rows)
    )
    new = analyze_checkpoints(run, device="cpu")
    assert [e["step"] for e in new] == [6, 12]
    # judged, as `analyze` judges a checkpoint, with the loss trend up to its step
    trends = [e["report"]["verdict"]["trend"] for e in new]
    assert trends == [loss_trend(rows, 6).to_dict(), loss_trend(rows, 12).to_dict()]
    assert all(t["drop_per_doubling"] > 0.4 for t in trends)
    assert all("still training" in e["report"]["verdict"]["answers"] for e in new)
    assert all(e["source"] == "checkpoint" for e in new)
    assert {(r["block"], r["part"]) for r in new[0]["report"]["layers"]} == {
        (b, p) for b in (0, 1) for p in ("block", "attn", "mlp")
    }
    # the same monitoring set as during training
    sha = {e["report"]["monitoring"]["sha256"] for e in read_events(run / "monitor.jsonl")}
    assert len(sha) == 1
    assert analyze_checkpoints(run) == []  # already filled: nothing new


def test_no_monitor_flag(tmp_path, tiny_corpus, capsys):
    assert train_cli(tmp_path, tiny_corpus, "--no-monitor") == 0
    assert not (tmp_path / "run" / "monitor.jsonl").exists()
    assert "monitor:" not in capsys.readouterr().out


def test_bad_monitor_flags_fail_before_training(tmp_path, tiny_corpus, capsys):
    assert train_cli(tmp_path, tiny_corpus, "--monitor-preset", "cheap") == 2
    err = capsys.readouterr().err
    assert "preset" in err and err.count("\n") == 1
    assert not (tmp_path / "run").exists()
    assert train_cli(tmp_path, tiny_corpus, "--monitor-loggers", "mlflow") == 2
    assert not (tmp_path / "run").exists()


def test_yes_demo_checks_go_through_the_monitor(tmp_path):
    from layerpeel.yes.bounds import to_db
    from layerpeel.yes.paper import YesDemoConfig, run_yes_demo

    result = run_yes_demo(YesDemoConfig(task="synthetic", epochs=3, n_samples=60), tmp_path)
    events = read_events(tmp_path / "monitor.jsonl")
    assert [e["event"] for e in events] == ["yes"] * 4
    assert [e["step"] for e in events] == [0, 1, 2, 3]  # epoch 0 is the initialization
    for event, row in zip(events, result.rows, strict=True):
        assert event["loss"] == row["train_loss_db"]
        assert event["yes0"] == to_db(row["yes0_min"])
        assert event["yes"] == [to_db(v) for v in row["yes_min"]]
        assert event["verdict"] == row["verdict"] and event["db"] is True


def test_analyze_all_checkpoints_cli(tmp_path, tiny_corpus, capsys):
    assert train_cli(tmp_path, tiny_corpus, "--no-monitor") == 0
    capsys.readouterr()
    assert main(["analyze", str(tmp_path / "run"), "--all-checkpoints", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "2 checkpoint(s) analysed" in out
    events = read_events(tmp_path / "run" / "monitor.jsonl")
    assert [(e["step"], e["source"]) for e in events] == [(6, "checkpoint"), (12, "checkpoint")]
    assert main(["analyze", str(tmp_path / "nothing"), "--all-checkpoints"]) == 2


def test_resumed_train_carries_on_the_rotation(tmp_path, tiny_corpus, capsys):
    flags = ["--monitor-warmup", "3", "--monitor-budget", "10", "--monitor-preset", "economy"]
    assert train_cli(tmp_path, tiny_corpus, *flags) == 0
    before = read_events(tmp_path / "run" / "monitor.jsonl")
    code = main(
        [
            "train",
            "--resume",
            str(tmp_path / "run"),
            "--max-steps",
            "18",
            "--no-progress",
            *flags,
        ]
    )
    assert code == 0
    events = read_events(tmp_path / "run" / "monitor.jsonl")
    assert events[: len(before)] == before
    new = events[len(before) :]
    assert new and all(e["step"] > 12 for e in new)
    assert [e["unit"] for e in new] == ["p1"] * len(new)  # no second sweep after resuming
