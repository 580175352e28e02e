"""The training monitor: schedules, budget, never changing or stopping the run, bad input."""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from layerpeel.data.monitoring import monitoring_set
from layerpeel.errors import ConfigError, DataError, LayerpeelError
from layerpeel.models import GPT, MLP, GPTConfig, MLPConfig
from layerpeel.monitor import (
    Monitor,
    MonitorConfig,
    Unit,
    at,
    every,
    log_spaced,
    read_events,
)
from layerpeel.monitor.state import snapshot
from layerpeel.peel.analysis import PeelConfig

TINY = GPTConfig(vocab_size=32, n_layer=2, n_head=2, d_model=16, block_size=16, dropout=0.1)
FAST_PEEL = PeelConfig(n_boot=50, etas=(0.0, 0.1), search_sequences=4, adam_steps=5)


def tiny_gpt(seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(TINY)


def tiny_mset(seed: int = 1, vocab: int = 32, length: int = 9):
    g = torch.Generator().manual_seed(seed)
    return monitoring_set(torch.randint(0, vocab, (6, length), generator=g))


def monitor_for(model, run: Path, **kw) -> Monitor:
    schedule = kw.pop("schedule", every(3))
    cfg = MonitorConfig(
        **{"preset": "full", "warmup": 2, "max_overhead": None, "peel": FAST_PEEL, **kw}
    )
    return Monitor(model, tiny_mset(), run, cfg, schedule=schedule)


def train(model: GPT, steps: int, monitor: Monitor | None = None) -> list[float]:
    """A plain loop with dropout, so any change to the random number streams shows."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    data = torch.randint(0, 32, (64, 17), generator=torch.Generator().manual_seed(5))
    losses = []
    for step in range(1, steps + 1):
        idx = torch.randint(0, 64, (4,))  # global torch generator: the monitor must not move it
        x = data[idx]
        loss = model.loss(x[:, :-1], x[:, 1:])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if monitor is not None:
            monitor.step(step, train_loss=loss)
    return losses


# -- schedules ---------------------------------------------------------------------------------


def test_schedules_against_listed_steps():
    assert [s for s in range(30) if every(7, start=3)(s)] == [3, 10, 17, 24]
    assert [s for s in range(30) if at([5, 2, 40])(s)] == [2, 5]
    # points 10^(k/4) rounded up: 1, 1.78, 3.16, 5.62, 10, 17.8, 31.6, 56.2, 100, ...
    expected = sorted({int(np.ceil(10 ** (k / 4) - 1e-9)) for k in range(13)})
    assert [s for s in range(1, 1001) if log_spaced(4)(s)] == expected
    with pytest.raises(ConfigError):
        every(0)


# -- budget -------------------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class CostlyAnalysis:
    """Stands in for the peeling analyses: each unit costs a known time on a fake clock."""

    def __init__(self, clock: FakeClock, costs: dict[str, float], n_blocks: int = 4) -> None:
        self.clock, self.costs, self.position, self.n_blocks = clock, costs, -1, n_blocks
        self.done: list[Unit] = []

    def next_unit(self) -> Unit:
        if self.position < 0:
            return Unit("sweep", tuple(range(self.n_blocks)))
        rotation = [Unit("p1", (b,)) for b in range(self.n_blocks)] + [Unit("p3")]
        return rotation[self.position % len(rotation)]

    def advance(self) -> None:
        self.position += 1

    def run(self, model, unit):
        self.clock.now += self.costs[unit.kind]
        self.done.append(unit)
        return {"event": "analysis", "unit": unit.kind, "report": {"layers": []}}

    def state_dict(self):
        return {"position": self.position}

    def load_state_dict(self, state):
        self.position = state["position"]


def test_budget_spaces_analyses_and_rotates_blocks(tmp_path: Path):
    clock = FakeClock()
    mon = Monitor(tiny_gpt(), tiny_mset(), tmp_path, MonitorConfig(warmup=10, max_overhead=0.05))
    mon.budget.clock = clock
    mon.analysis = CostlyAnalysis(clock, {"sweep": 8.0, "p1": 2.0, "p3": 6.0})
    events = []
    for step in range(1, 3001):
        clock.now += 1.0  # every training step takes one second
        ev = mon.step(step)
        if ev:
            events.append(ev)
    units = [(u.kind, u.blocks) for u in mon.analysis.done]
    assert units[:7] == [
        ("sweep", (0, 1, 2, 3)),
        ("p1", (0,)),
        ("p1", (1,)),
        ("p1", (2,)),
        ("p1", (3,)),
        ("p3", ()),
        ("p1", (0,)),
    ]
    # independent accounting: monitor time is the sum of unit costs, training time 1 s a step
    # minus the first step (before the monitor's first call there is nothing to measure)
    spent = sum({"sweep": 8.0, "p1": 2.0, "p3": 6.0}[k] for k, _ in units)
    assert mon.budget.monitor_s == pytest.approx(spent)
    assert mon.budget.train_s == pytest.approx(2999.0)
    assert mon.overhead <= 0.05
    # after the first analysis every logged overhead is within budget, and the budget is used
    assert all(ev["overhead"] <= 0.05 + 1e-12 for ev in events[1:])
    assert mon.overhead > 0.04
    assert events[0]["step"] == 10  # the first analysis comes right after warm-up
    logged = [e for e in read_events(tmp_path / "monitor.jsonl") if e["event"] == "analysis"]
    assert len(logged) == len(events)


def test_schedule_is_kept_pending_until_the_budget_allows(tmp_path: Path):
    clock = FakeClock()
    mon = Monitor(
        tiny_gpt(),
        tiny_mset(),
        tmp_path,
        MonitorConfig(warmup=0, max_overhead=0.5),
        schedule=at([1, 2]),
    )
    mon.budget.clock = clock
    mon.analysis = CostlyAnalysis(clock, {"sweep": 10.0, "p1": 10.0, "p3": 10.0})
    steps = []
    for step in range(1, 200):
        clock.now += 1.0
        if mon.step(step):
            steps.append(step)
    # step 1: no training time measured yet, nothing expected -> runs (10 s); step 2 is due but
    # must wait until 0.5 * train >= 10 + 10, i.e. 40 s of training (step 41); then nothing more
    assert steps == [1, 41]


# -- never changes the run ------------------------------------------------------------------------


def test_monitored_run_ends_bit_identical(tmp_path: Path):
    torch.manual_seed(0)
    plain = tiny_gpt()
    losses_plain = train(plain, 14)
    torch.manual_seed(0)
    watched = tiny_gpt()
    mon = monitor_for(watched, tmp_path)
    losses_watched = train(watched, 14, mon)
    kinds = [e["unit"] for e in read_events(tmp_path / "monitor.jsonl") if e["event"] == "analysis"]
    assert kinds == ["sweep", "p1", "p1", "p3"]  # steps 3, 6, 9, 12 (full preset, 2 blocks)
    assert mon.failures == 0
    assert losses_plain == losses_watched
    for (name, a), (_, b) in zip(plain.named_parameters(), watched.named_parameters(), strict=True):
        assert torch.equal(a, b), name
        assert torch.equal(a.grad, b.grad), name


class MeddlingAnalysis(CostlyAnalysis):
    """An analysis that disturbs everything it can reach: generators, modes, weights, grads."""

    def run(self, model, unit):
        torch.rand(3)
        random.random()
        np.random.rand(2)
        model.train()
        with torch.no_grad():
            for p in model.parameters():
                p.add_(1.0)
                p.grad = torch.ones_like(p)
        return super().run(model, unit)


def test_run_is_bit_identical_even_when_the_analysis_meddles(tmp_path: Path):
    torch.manual_seed(0)
    plain = tiny_gpt()
    train(plain, 10)
    torch.manual_seed(0)
    watched = tiny_gpt()
    mon = monitor_for(watched, tmp_path, warmup=0, schedule=every(2))
    mon.analysis = MeddlingAnalysis(FakeClock(), {"sweep": 0.0, "p1": 0.0, "p3": 0.0})
    train(watched, 10, mon)
    assert len(mon.analysis.done) == 5
    for (name, a), (_, b) in zip(plain.named_parameters(), watched.named_parameters(), strict=True):
        assert torch.equal(a, b), name
        assert torch.equal(a.grad, b.grad), name


def test_analysis_leaves_every_piece_of_state(tmp_path: Path):
    model = tiny_gpt()
    train(model, 3)  # gradients present
    model.blocks[1].eval()  # a mixed train/eval state must survive too
    mon = monitor_for(model, tmp_path, warmup=0, schedule=every(1))
    before = snapshot(model)
    rng = (torch.get_rng_state(), random.getstate(), np.random.get_state())
    for step in range(1, 6):  # sweep, p1, p1, p3, p2
        assert mon.step(step) is not None
    after = snapshot(model)
    for key in ("params", "grads", "buffers"):
        for name, t in before[key].items():
            assert torch.equal(t, after[key][name]), (key, name)
    assert before["modes"] == after["modes"]
    assert before["requires_grad"] == after["requires_grad"]
    assert torch.equal(torch.get_rng_state(), rng[0])
    assert random.getstate() == rng[1]
    assert np.array_equal(np.random.get_state()[1], rng[2][1])


# -- never stops the run --------------------------------------------------------------------------


def test_broken_analysis_is_logged_and_switched_off(tmp_path: Path, monkeypatch, caplog):
    import layerpeel.monitor.analyses as analyses

    def broken(*args, **kwargs):
        raise RuntimeError("deliberately broken analysis\nsecond line")

    monkeypatch.setattr(analyses, "peel", broken)
    model = tiny_gpt()
    mon = monitor_for(model, tmp_path, warmup=0, schedule=every(2))
    with caplog.at_level(logging.WARNING):
        losses = train(model, 20, mon)
    assert len(losses) == 20 and all(np.isfinite(losses))  # training went on to the end
    events = read_events(tmp_path / "monitor.jsonl")
    errors = [e for e in events if e["event"] == "error"]
    disabled = [e for e in events if e["event"] == "disabled"]
    assert [e["step"] for e in errors] == [2, 4, 6]
    assert errors[0]["message"] == "RuntimeError: deliberately broken analysis"
    for e in errors:
        text = (tmp_path / e["traceback"]).read_text()
        assert "Traceback" in text and "deliberately broken analysis" in text
    assert len(disabled) == 1 and disabled[0]["step"] == 6
    assert not mon.enabled and mon.failures == 3
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "switched off" in warnings[0].getMessage()


def test_training_never_sees_monitor_exceptions_even_when_logging_fails(tmp_path: Path):
    class Exploding:
        def log(self, event):
            raise OSError("disk full")

        def close(self):
            raise OSError("disk full")

    model = tiny_gpt()
    mon = Monitor(
        model,
        tiny_mset(),
        tmp_path,
        MonitorConfig(warmup=0, max_overhead=None, preset="economy", peel=FAST_PEEL),
        schedule=every(1),
        loggers=[Exploding()],
    )
    train(model, 6, mon)
    mon.close()
    assert mon.failures == 3 and not mon.enabled


# -- bad input at construction ---------------------------------------------------------------------


def test_bad_input_fails_at_construction(tmp_path: Path):
    model = tiny_gpt()
    with pytest.raises(DataError, match="vocabulary"):
        Monitor(model, tiny_mset(vocab=40), tmp_path)
    with pytest.raises(DataError, match="context"):
        Monitor(model, tiny_mset(length=TINY.block_size + 2), tmp_path)
    with pytest.raises(ConfigError, match="unsupported model class MLP"):
        Monitor(MLP(MLPConfig()), tiny_mset(), tmp_path)
    with pytest.raises(ConfigError, match="preset"):
        Monitor(model, tiny_mset(), tmp_path, MonitorConfig(preset="cheap"))
    with pytest.raises(ConfigError, match="logger"):
        Monitor(model, tiny_mset(), tmp_path, MonitorConfig(loggers=("mlflow",)))
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(LayerpeelError, match="cannot"):
        Monitor(model, tiny_mset(), blocker / "run")
    assert not (tmp_path / "monitor.jsonl").exists()


@pytest.mark.skipif(__import__("os").geteuid() == 0, reason="root can write to read-only folders")
def test_read_only_folder_fails_at_construction(tmp_path: Path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(LayerpeelError, match="writable|cannot"):
            Monitor(tiny_gpt(), tiny_mset(), ro)
    finally:
        ro.chmod(0o700)


# -- resuming --------------------------------------------------------------------------------------


def test_state_dict_and_resume_keep_the_history(tmp_path: Path):
    model = tiny_gpt()
    mon = monitor_for(model, tmp_path, preset="economy", warmup=0, schedule=every(1))
    for step in range(1, 5):
        mon.step(step)
    state = json.loads(json.dumps(mon.state_dict()))  # must survive JSON
    again = monitor_for(tiny_gpt(), tmp_path, preset="economy", warmup=0, schedule=every(1))
    again.load_state_dict(state)
    assert again.verdicts == mon.verdicts and again.analyses == 4
    assert again.analysis.next_unit() == mon.analysis.next_unit() == Unit("p1", (1,))
    # a run resumed from step 2 drops later events and carries on the rotation from there
    third = monitor_for(tiny_gpt(), tmp_path, preset="economy", warmup=0, schedule=every(1))
    third.resume_at(2)
    steps = [e["step"] for e in read_events(tmp_path / "monitor.jsonl")]
    assert steps == [1, 2]
    assert third.analysis.next_unit() == Unit("p1", (1,))  # sweep at 1, block 0 at 2


# -- MLPs: the YES bounds through the same monitor ----------------------------------------------


def test_yes_monitor_matches_the_tracker(tmp_path: Path):
    from layerpeel.monitor import YesData
    from layerpeel.yes.bounds import YesTracker, to_db

    torch.manual_seed(0)
    x, y = torch.randn(40, 5), torch.randn(40, 6).abs()
    model = MLP(MLPConfig(n_in=5, width=6, n_layers=3))
    mon = Monitor(
        model, YesData(x, y), tmp_path, MonitorConfig(warmup=0, max_overhead=None), every(1)
    )
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    tracker = YesTracker(x.T, y.T)
    for step in range(1, 4):
        loss = (model(x) - y).square().sum(1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        event = mon.step(step, train_loss=loss)
        with torch.no_grad():
            mse = float((model(x) - y).double().square().sum(1).mean())
            check = tracker.check([h.T for h in model.hidden(x)], mse)
        assert event is not None and event["event"] == "yes"
        assert event["loss"] == pytest.approx(to_db(mse))
        assert event["yes0"] == pytest.approx(to_db(check.yes0_min))
        assert event["yes"] == pytest.approx([to_db(v) for v in check.yes_min])
        assert event["verdict"] == check.verdict and event["db"] is True


def test_other_ranks_write_nothing(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    model = tiny_gpt()
    mon = monitor_for(model, tmp_path / "run", warmup=0, schedule=every(1))
    train(model, 3, mon)
    assert not (tmp_path / "run").exists()
    assert mon.analyses == 0


def test_context_manager_form(tmp_path: Path):
    model = tiny_gpt()
    mon = monitor_for(model, tmp_path, preset="economy", warmup=0, schedule=at([2]))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randint(0, 32, (2, 9))
    for step in range(1, 4):
        with mon.watch(step):
            loss = model.loss(x[:, :-1], x[:, 1:])
            opt.zero_grad()
            loss.backward()
            opt.step()
    assert [e["step"] for e in read_events(tmp_path / "monitor.jsonl")] == [2]
    assert mon.budget.train_s > 0 and mon.budget.monitor_s > 0


def test_tensorboard_wandb_and_csv_loggers(tmp_path: Path, monkeypatch):
    pytest.importorskip("tensorboard")
    pytest.importorskip("wandb")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.setenv("WANDB_SILENT", "true")
    model = tiny_gpt()
    mon = monitor_for(
        model,
        tmp_path,
        preset="standard",
        warmup=0,
        schedule=every(1),
        loggers=("tensorboard", "wandb", "csv"),
    )
    train(model, 4, mon)  # sweep, block 0, block 1, P3
    mon.close()
    assert mon.failures == 0
    events = [e for e in read_events(tmp_path / "monitor.jsonl") if e["event"] == "analysis"]
    assert [e["unit"] for e in events] == ["sweep", "p1", "p1", "p3"]
    runs = [p for p in (tmp_path / "tensorboard").rglob("events.out.tfevents.*")]
    assert len(runs) == 1 and runs[0].parent == tmp_path / "tensorboard"  # no add_scalars dirs
    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"peel/gap/block01/attn", "peel/verdict/block00/block", "monitor/overhead"} <= tags
    assert {"peel/cascade/yes0", "peel/cascade/yes1"} <= tags
    gap = [(s.step, s.value) for s in acc.Scalars("peel/gap/block01/mlp")]
    expected = [
        (e["step"], r["gap"])
        for e in events
        for r in e["report"]["layers"]
        if (r["block"], r["part"]) == (1, "mlp")
    ]
    assert [s for s, _ in gap] == [s for s, _ in expected] == [1, 3]
    assert [v for _, v in gap] == pytest.approx([v for _, v in expected], rel=1e-6)
    rows = (tmp_path / "monitor.csv").read_text().splitlines()
    assert rows[0] == "step,tag,value"
    assert f"4,peel/cascade/yes0,{events[3]['report']['cascade']['yes0']!r}" in rows
    assert list((tmp_path / "wandb").rglob("*.wandb"))  # an offline W&B run was written


def test_events_carry_the_whole_model_verdict_with_the_loss_trend(tmp_path: Path):
    """A steeply falling training loss makes the event's verdict 'still training'."""
    mon = monitor_for(tiny_gpt(), tmp_path, preset="economy", schedule=every(40))
    events = [mon.step(s, train_loss=1.0 + 4.0 / s**0.5) for s in range(1, 41)]
    event = [e for e in events if e][-1]
    verdict = event["verdict"]
    assert "still training" in verdict["answers"]
    assert verdict["trend"]["step"] == 40 and verdict["trend"]["drop_per_doubling"] > 0.1
    # every block's latest row is judged, though the event's unit may cover fewer
    assert {r["block"] for r in event["report"]["layers"]} <= {0, 1}
    logged = [e for e in read_events(tmp_path / "monitor.jsonl") if e["event"] == "analysis"]
    assert logged[-1]["verdict"] == verdict


def test_a_flat_loss_is_not_still_training(tmp_path: Path):
    mon = monitor_for(tiny_gpt(), tmp_path, preset="economy", schedule=every(40))
    events = [mon.step(s, train_loss=2.0 + 0.001 * (s % 3)) for s in range(1, 41)]
    event = [e for e in events if e][-1]
    assert event["verdict"]["trend"]["drop_per_doubling"] < 0.01
    assert "the training loss falls" not in event["verdict"]["sentence"]


def test_the_loss_history_is_thinned_not_grown_without_bound(tmp_path: Path):
    from layerpeel.monitor.core import HISTORY

    mon = monitor_for(tiny_gpt(), tmp_path, schedule=lambda step: False)
    for s in range(1, 3 * HISTORY):
        mon.step(s, train_loss=1.0)
    assert len(mon.losses) <= HISTORY
    steps = [s for s, _ in mon.losses]
    assert steps[0] < HISTORY // 4 and steps[-1] == 3 * HISTORY - 1  # still spans the run
