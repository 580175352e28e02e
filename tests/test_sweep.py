"""`layerpeel sweep`: checkpoints analysed as Ray tasks equal the same analyses run in turn.

Ray is an optional extra; without it these tests skip and say so. Each pytest worker starts its
own local Ray once (about 10-15 s here), shared by the tests of this module.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from json_diff import differences
from layerpeel.cli import main
from layerpeel.models import GPTConfig
from layerpeel.monitor import MonitorConfig, analyze_checkpoints, read_events
from layerpeel.quant import QuantConfig
from layerpeel.training.trainer import TrainConfig, Trainer

MONITOR = MonitorConfig(preset="standard", tokens=192, seq_len=16)
VOLATILE = {"time", "seconds", "time_s", "timings"}  # wall-clock fields


def same(a: Any, b: Any) -> list[str]:
    """Differences between two results, ignoring wall-clock fields; floats to 1e-6."""
    return differences(a, b, VOLATILE)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny run with 4 checkpoints (steps 2, 4, 6, 8) and the monitor settings recorded."""
    tmp = tmp_path_factory.mktemp("sweep")
    corpus = tmp / "corpus.txt"
    corpus.write_text("To sweep or not to sweep, that is the question of every checkpoint. " * 60)
    cfg = TrainConfig(data=str(corpus), max_steps=8, batch_size=4, eval_every=8, checkpoint_every=2)
    tiny = GPTConfig(vocab_size=256, n_layer=2, n_head=2, d_model=16, block_size=16)
    trainer = Trainer.create(tmp / "run", tiny, QuantConfig(), cfg)
    trainer.fit()
    sections = trainer.run.read_config()
    sections["monitor"] = MONITOR.to_dict()
    for key in ("kind", "version", "layerpeel"):
        sections.pop(key, None)
    trainer.run.write_config(sections)
    assert len(trainer.run.checkpoints()) == 4
    return tmp / "run"


def copy_run(run: Path, dest: Path) -> Path:
    shutil.copytree(run, dest)
    return dest


@pytest.fixture(scope="module")
def ray_local():
    ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'layerpeel[ray]')")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


@pytest.mark.slow
def test_sweep_of_4_checkpoints_equals_4_sequential_analyses(trained, tmp_path, ray_local):
    from layerpeel.distributed.sweep import sweep

    one = copy_run(trained, tmp_path / "sequential")
    many = copy_run(trained, tmp_path / "ray")
    expected = analyze_checkpoints(one)
    seen: list[tuple[int, int]] = []
    result = sweep(many, progress=lambda done, total, name, err: seen.append((done, total)))
    assert [e["step"] for e in expected] == [2, 4, 6, 8]
    assert result.failures == {} and result.skipped == 0
    assert seen == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert same(expected, result.events) == []
    # the time series on disk: the same events in the same order
    assert same(read_events(one / "monitor.jsonl"), read_events(many / "monitor.jsonl")) == []
    assert sweep(many).events == []  # already filled: nothing new


@pytest.mark.slow
def test_a_failing_checkpoint_is_named_and_the_others_are_kept(
    trained, tmp_path, ray_local, capsys
):
    run = copy_run(trained, tmp_path / "run")
    bad = sorted((run / "checkpoints").glob("*.safetensors"))[1]
    bad.write_bytes(bad.read_bytes()[:100])  # truncated mid-sweep by a failing disk
    code = main(["sweep", str(run), "--retries", "1", "--cpus-per-task", "1"])
    captured = capsys.readouterr()
    assert code == 2
    error = captured.err.strip().splitlines()[-1]
    assert error.startswith("layerpeel: error: 1 checkpoint(s) failed")
    assert "CheckpointError" in error and "the others are kept" in error
    assert "checkpoint 4/4" in captured.err  # progress lines
    steps = [e["step"] for e in read_events(run / "monitor.jsonl")]
    assert len(steps) == 3 and steps == sorted(steps)
    failed_step = ({2, 4, 6, 8} - set(steps)).pop()
    assert f"{failed_step:06d}" in error or bad.stem.split(".")[0] in error


@pytest.mark.slow
def test_a_failed_task_is_retried(trained, tmp_path, ray_local):
    from layerpeel.distributed.sweep import SweepOptions, analyse_checkpoint, sweep

    run = copy_run(trained, tmp_path / "run")

    def flaky_task(marks: Path) -> Any:
        marks.mkdir()

        def flaky(path: str, mset: Any, config: dict[str, Any], threads: int) -> dict[str, Any]:
            attempt = len(list(marks.glob(Path(path).stem + "-*"))) + 1
            (marks / f"{Path(path).stem}-{attempt}").touch()
            if attempt == 1:
                raise OSError("transient failure of the first attempt")
            return analyse_checkpoint(path, mset, config, threads)

        return flaky

    result = sweep(run, options=SweepOptions(retries=1), task=flaky_task(tmp_path / "a"))
    assert result.failures == {}
    assert [e["step"] for e in result.events] == [2, 4, 6, 8]
    assert len(list((tmp_path / "a").iterdir())) == 8  # every checkpoint: a failure, a retry
    again = copy_run(trained, tmp_path / "r2")
    none = sweep(again, options=SweepOptions(retries=0), task=flaky_task(tmp_path / "b"))
    assert none.events == [] and len(none.failures) == 4  # no retry left: each one named
    assert all("OSError: transient failure" in e for e in none.failures.values())


def test_an_unreachable_ray_address_is_one_line(trained, capsys):
    pytest.importorskip("ray", reason="Ray is not installed (pip install 'layerpeel[ray]')")
    assert main(["sweep", str(trained), "--ray-address", "127.0.0.1:1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "cannot reach the Ray cluster at 127.0.0.1:1" in err


def test_bad_sweep_options_are_one_line(trained, capsys):
    assert main(["sweep", str(trained), "--retries", "-1"]) == 2
    assert "retries" in capsys.readouterr().err
