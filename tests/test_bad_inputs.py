"""Bad input on every verb: exit code 2, one line on stderr, no traceback, nothing written.

One test per class of bad input, each parametrized over the inputs of its class: output paths
that cannot be written, values out of range, folders that are not runs. Every case runs the CLI
in a folder of its own holding a trained tiny run, a corpus and a file, and checks that no file
there was created, changed or removed.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from layerpeel.cli import main
from layerpeel.models import GPTConfig
from layerpeel.quant import QuantConfig
from layerpeel.training.trainer import TrainConfig, Trainer

TINY = GPTConfig(vocab_size=256, n_layer=2, n_head=2, d_model=32, block_size=16)
NO_WORK = ["--no-progress", "--no-ladder", "--no-cascade", "--no-work"]
TEXT = "A corpus of some length, enough for a few windows of sixteen bytes each. " * 60
MODEL = ["--n-layer", "1", "--n-head", "2", "--d-model", "16", "--block-size", "16"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A trained tiny run with two checkpoints, an analysis and a monitor log (built once)."""
    root = tmp_path_factory.mktemp("trained")
    (root / "corpus.txt").write_text(TEXT)
    cfg = TrainConfig(
        data=str(root / "corpus.txt"),
        max_steps=4,
        batch_size=4,
        warmup_steps=1,
        eval_every=2,
        eval_sequences=4,
        log_every=2,
        checkpoint_every=2,
    )
    Trainer.create(root / "run", TINY, QuantConfig(scheme="ternary"), cfg).fit()
    analysis = root / "run" / "analysis"
    analysis.mkdir()
    (analysis / "step-000004.json").write_text('{"kept": "as it is"}\n')
    (root / "run" / "monitor.jsonl").write_text('{"event": "start", "step": 0}\n')
    return root


@pytest.fixture
def place(trained, tmp_path, monkeypatch) -> Path:
    """A copy of the trained run, a corpus, a plain file and an empty folder; the cwd is there."""
    shutil.copytree(trained, tmp_path, dirs_exist_ok=True)
    (tmp_path / "file.txt").write_text("a file, not a folder\n")
    (tmp_path / "empty").mkdir()
    monkeypatch.chdir(tmp_path)
    return tmp_path


def snapshot(root: Path) -> dict[str, tuple[str, int, int]]:
    """Every file and folder under `root`: kind, size, modification time."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            st = path.stat()
            kind = "dir" if path.is_dir() else "file"
            out[str(path.relative_to(root))] = (
                kind,
                0 if kind == "dir" else st.st_size,
                st.st_mtime_ns,
            )
    return out


def refused(place: Path, capsys, args: list[str]) -> str:
    """Run the CLI; assert the clean refusal and an untouched folder; return the error line."""
    before = snapshot(place)
    capsys.readouterr()
    code = main([str(a) for a in args])
    err = capsys.readouterr().err
    assert code == 2, (args, err)
    assert "Traceback" not in err, err
    assert err.count("\n") == 1 and err.startswith("layerpeel: error: "), err
    assert snapshot(place) == before, args
    return err


# -- outputs that cannot be written, refused before any work ---------------------------------
OUTPUTS = [
    ["analyze", "run", "--json", "empty", *NO_WORK],
    ["analyze", "run", "--json", ".", *NO_WORK],
    ["analyze", "run", "--json", "file.txt/r.json", *NO_WORK],
    ["analyze", "run", "--json", "file.txt/deeper/r.json", *NO_WORK],
    ["analyze", "run", "--json", "run", *NO_WORK],
    ["analyze", "run/checkpoints", "--json", "file.txt/r.json", *NO_WORK],
    ["report", "run", "-o", "empty"],
    ["report", "run", "-o", "file.txt/r.html"],
    ["report", "run", "-o", "file.txt/a/b/r.html"],
    ["report", "run", "--figures", "file.txt"],
    ["report", "run", "--figures", "file.txt/figs"],
    ["report", "run", "-o", "r.html", "--figures", "file.txt"],
    ["train", "--out", "file.txt", "--data", "corpus.txt", *MODEL, "--no-progress"],
    ["train", "--out", "file.txt/run", "--data", "corpus.txt", *MODEL, "--no-progress"],
    ["train", "--out", "run", "--data", "corpus.txt", *MODEL, "--no-progress"],
    ["demo", "--out", "file.txt", "--no-progress"],
    ["demo", "--out", "file.txt/demo", "--no-progress"],
    ["yes-demo", "synthetic", "--out", "file.txt", "--no-progress"],
    ["yes-demo", "denoise", "--out", "file.txt/yes", "--no-progress"],
    ["yes-demo", "digits", "--out", "file.txt/a/b", "--no-progress"],
]


@pytest.mark.parametrize("args", OUTPUTS, ids=lambda a: " ".join(a[:4]))
def test_unwritable_outputs_are_refused_before_any_work(place, capsys, args):
    refused(place, capsys, args)


READ_ONLY = [
    ["analyze", "run", "--json", "ro/r.json", *NO_WORK],
    ["analyze", "run", "--json", "ro/new/r.json", *NO_WORK],
    ["report", "run", "-o", "ro/r.html"],
    ["report", "run", "--figures", "ro/figs"],
    ["train", "--out", "ro/run", "--data", "corpus.txt", *MODEL, "--no-progress"],
    ["demo", "--out", "ro/demo", "--no-progress"],
    ["yes-demo", "synthetic", "--out", "ro/yes", "--no-progress"],
]


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
@pytest.mark.parametrize("args", READ_ONLY, ids=lambda a: " ".join(a[:4]))
def test_outputs_in_a_read_only_folder_are_refused(place, capsys, args):
    ro = place / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        refused(place, capsys, args)
    finally:
        ro.chmod(0o755)


# -- values out of range ---------------------------------------------------------------------
VALUES = [
    *(["analyze", "run", "--tokens", t, *NO_WORK] for t in ("-5", "0", "1", "2", "3", "40", "47")),
    ["analyze", "run", "--budget-mb", "0", *NO_WORK],
    ["analyze", "run", "--budget-mb=-1", *NO_WORK],
    ["analyze", "run", "--solver", "newton", *NO_WORK],
    ["analyze", "run", "--parts", "block,head", *NO_WORK],
    ["analyze", "run", "--blocks", "7", *NO_WORK],
    ["analyze", "run", "--blocks", "one", *NO_WORK],
    ["analyze", "run", "--etas", "0,big", *NO_WORK],
    ["analyze", "run", "--etas", ",", *NO_WORK],
    ["analyze", "run", "--search-sequences", "0", *NO_WORK],
    ["analyze", "run", "--idle=-0.5", *NO_WORK],
    ["analyze", "run", "--data", "empty", *NO_WORK],
    ["analyze", "run", "--data", "nowhere.txt", *NO_WORK],
    ["analyze", "--hf", "nowhere", *NO_WORK],
    ["analyze", "run", "--hf", "run", *NO_WORK],
    ["analyze", *NO_WORK],
    ["sample", "run", "--top-k", "0"],
    ["sample", "run", "--top-k=-3"],
    ["sample", "run", "--temperature=-1"],
    ["sample", "run", "--temperature", "nan"],
    ["sample", "run", "--temperature", "inf"],
    ["sample", "run", "--tokens", "0"],
    ["sample", "run", "--tokens=-1"],
    ["sample", "run", "--prompt", ""],
    *(
        ["train", "--out", "new", "--data", "corpus.txt", *MODEL, *(flag, value)[: 1 + bool(value)]]
        for flag, value in [
            ("--max-steps", "0"),
            ("--max-steps", "-1"),
            ("--batch-size", "0"),
            ("--lr", "0"),
            ("--lr", "-1"),
            ("--warmup-steps", "-1"),
            ("--weight-decay", "nan"),
            ("--weight-decay=-0.1", ""),
            ("--grad-clip", "nan"),
            ("--batch-size=-1", ""),
            ("--n-layer", "0"),
            ("--n-head", "0"),
            ("--d-model", "0"),
            ("--dropout=-1", ""),
            ("--grad-clip", "-1"),
            ("--eval-every", "0"),
            ("--checkpoint-every", "0"),
            ("--dropout", "1.5"),
            ("--quant", "int9"),
            ("--tokenizer", "words"),
            ("--monitor-preset", "lavish"),
            ("--monitor-budget", "-1"),
            ("--monitor-warmup", "-1"),
            ("--monitor-loggers", "carrier-pigeon"),
        ]
    ),
    ["train", "--out", "new", "--data", "corpus.txt", "--d-model", "30", "--n-head", "4"],
    ["train", "--out", "new", "--data", "corpus.txt", *MODEL, "--block-size", "0"],
    ["train", "--out", "new", "--resume", "run"],
    ["train", "--no-progress"],
    ["train", "--resume", "run", "--max-steps", "0"],
    ["train", "--resume", "run", "--max-steps=-4"],
    ["demo", "--out", "new", "--max-steps", "0", "--no-progress"],
    ["demo", "--out", "new", "--max-steps=-1", "--no-progress"],
    ["demo", "--out", "new", "--quant", "int9", "--no-progress"],
    ["demo", "--out", "run", "--max-steps", "0", "--no-progress"],
    ["yes-demo", "mnist", "--out", "new"],
    ["yes-demo", "synthetic", "--out", "new", "--epochs=-1"],
    ["yes-demo", "synthetic", "--out", "new", "--epochs", "many"],
    ["yes-demo", "synthetic", "--out", "new", "--seed=-1"],
    ["yes-demo", "synthetic", "--out", "new", "--samples", "5"],
    ["yes-demo", "synthetic", "--out", "new", "--samples", "x"],
    ["yes-demo", "synthetic", "--out", "new", "--samples", "1000000000"],
    ["yes-demo", "image", "--out", "new", "--samples", "100000000000"],
    ["yes-demo", "denoise", "--out", "new", "--samples", "10000000000"],
    ["yes-demo", "synthetic", "--out", "new", "--threads", "0"],
    ["yes-demo", "synthetic", "--out", "new", "--max-anchors=-1"],
    ["analyze", "run", "--tokens", "many", *NO_WORK],
    ["analyze", "run", "--no-such-flag"],
    ["analyze", "run", "--fail-on", "blue"],
    ["train", "--out", "new", "--max-steps", "1.5"],
    ["sample", "run", "--top-k", "two"],
    ["peel", "run"],
    [],
    ["serve", "run", "--port", "x"],
    ["serve", "run", "--port", "70000"],
    ["serve", "run", "--port=-1"],
]


@pytest.mark.parametrize("args", VALUES, ids=lambda a: " ".join(a[:4] + a[-3:-1]))
def test_values_out_of_range_are_refused(place, capsys, args):
    refused(place, capsys, args)


@pytest.fixture(scope="module")
def gpt2_folder(tmp_path_factory) -> Path:
    """A tiny GPT-2 folder whose position embedding holds 64 positions."""
    pytest.importorskip("transformers")
    from hf_models import tiny_model

    root = tmp_path_factory.mktemp("hf")
    tiny_model("GPT2LMHeadModel").save_pretrained(root / "gpt2")
    return root / "gpt2"


@pytest.mark.parametrize(
    "extra",
    [["--seq-len", "65"], ["--seq-len", "1024"], ["--seq-len", "0"], ["--seq-len=-8"],
     ["--tokens", "3"], ["--tokens", "255"], ["--json", "file.txt/r.json"], ["--json", "empty"]],
)  # fmt: skip
def test_hf_inputs_beyond_the_model_are_refused(place, gpt2_folder, capsys, extra):
    err = refused(place, capsys, ["analyze", "--hf", gpt2_folder, *extra, *NO_WORK])
    if extra[0] == "--seq-len" and int(extra[1].lstrip("=")) > 64:
        assert "context (64)" in err


# -- folders that are not runs ---------------------------------------------------------------
NOT_RUNS = (
    [
        [verb, *folder, *rest]
        for folder in (["empty"], ["nowhere"], ["file.txt"], ["run/checkpoints"])
        for verb, rest in (
            ("analyze", NO_WORK),
            ("sample", []),
            ("report", []),
            ("serve", ["--port", "0"]),
        )
    ]
    + [
        ["train", "--resume", folder, "--no-progress"]
        for folder in ("empty", "nowhere", "file.txt", "run/checkpoints")
    ]
    + [["analyze", folder, "--all-checkpoints"] for folder in ("empty", "nowhere", "file.txt")]
    + [["sweep", folder, "--no-progress"] for folder in ("empty", "nowhere")]
)


@pytest.mark.parametrize("args", NOT_RUNS, ids=lambda a: " ".join(a[:3]))
def test_folders_that_are_not_runs_are_refused(place, capsys, args):
    refused(place, capsys, args)


# -- no event lost ---------------------------------------------------------------------------
def _torn(path: Path) -> None:
    with open(path, "a") as fh:
        fh.write('{"event": "analysis", "step": 3, "rep')  # a writer killed mid-line


def _events(path: Path) -> list[dict]:
    lines = path.read_text().splitlines()
    return [json.loads(line) for line in lines]  # every line is whole JSON


def test_all_checkpoints_appends_after_a_torn_line(place, capsys):
    log = place / "run" / "monitor.jsonl"
    _torn(log)
    assert main(["analyze", "run", "--all-checkpoints", "--no-progress"]) == 0
    events = _events(log)
    assert events[0] == {"event": "start", "step": 0}
    assert sorted(e["step"] for e in events if e.get("source") == "checkpoint") == [2, 4]


def test_a_resumed_monitor_appends_after_a_torn_line(place, capsys):
    log = place / "run" / "monitor.jsonl"
    _torn(log)
    args = ["train", "--resume", "run", "--max-steps", "6", "--no-progress"]
    assert main([*args, "--monitor-warmup", "0", "--monitor-budget", "1"]) == 0
    events = _events(log)
    assert any(e.get("event") == "analysis" and e["step"] > 4 for e in events)


def test_resume_starts_over_a_run_stopped_before_its_first_checkpoint(place, capsys):
    run = place / "run"
    finished = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    shutil.rmtree(run / "checkpoints")  # killed before step 2: no checkpoint yet
    assert main(["train", "--resume", "run", "--no-progress", "--no-monitor"]) == 0
    # started over from the run's own seed, it ends exactly where the first one did
    assert json.loads((run / "metrics.jsonl").read_text().splitlines()[-1]) == finished
