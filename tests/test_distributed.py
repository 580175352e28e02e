"""Sharded analyses over torch.distributed (gloo, 2 CPU processes) and the monitor inside DDP.

Two real processes per scenario group, started with torch.multiprocessing (spawn) on a file
store, or with torchrun for the CLI. Every wait has a timeout, so a hang fails the test instead
of blocking the suite. The reference of every sharded result is one process running the same
analysis here.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import multiprocessing
import os
import subprocess
import sys
import traceback
from pathlib import Path
from typing import Any

import pytest
import torch

from json_diff import differences
from layerpeel import GPT, GPTConfig
from layerpeel.cli import main
from layerpeel.data.monitoring import monitoring_set
from layerpeel.distributed import ShardingError, Unit, make_plan, plan_analysis
from layerpeel.peel.analysis import PeelConfig, peel
from layerpeel.quant import QuantConfig, quantize_

TIMEOUT_S = 240  # per group of scenarios: a hang fails here
CFG = PeelConfig(n_boot=64, search_sequences=4, batch=4)


def tiny_model(quant: str | None = None) -> GPT:
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=48, n_layer=3, n_head=2, d_model=16, block_size=12))
    if quant:
        quantize_(model, QuantConfig(scheme=quant))
    return model


def tiny_data():
    g = torch.Generator().manual_seed(1)
    return monitoring_set(torch.randint(0, 48, (12, 13), generator=g))


def same(a: Any, b: Any) -> list[str]:
    """Differences between two results, ignoring timings; floats to 1e-6."""
    return differences(a, b, ("time_s", "timings"))


# -- running two ranks ----------------------------------------------------------------------------


def _rank_main(fn_name: str, rank: int, world: int, store: str, out: str, arg: str) -> None:
    """Child process: join the file-store group, run the scenario, write what it saw."""
    import torch.distributed as dist

    torch.set_num_threads(1)
    os.environ.pop("WORLD_SIZE", None)
    result: dict[str, Any]
    try:
        dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
        result = globals()[fn_name](rank, world, arg)
        dist.destroy_process_group()
    except BaseException:  # noqa: BLE001 - reported to the test
        result = {"crash": traceback.format_exc()}
    Path(out).write_text(json.dumps(result))


def run_ranks(fn_name: str, tmp: Path, arg: str = "", world: int = 2) -> list[dict[str, Any]]:
    ctx = multiprocessing.get_context("spawn")
    store = tmp / f"store-{fn_name}"
    outs = [tmp / f"{fn_name}-rank{r}.json" for r in range(world)]
    procs = [
        ctx.Process(target=_rank_main, args=(fn_name, r, world, str(store), str(outs[r]), arg))
        for r in range(world)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(TIMEOUT_S)
    hung = [r for r, p in enumerate(procs) if p.is_alive()]
    for p in procs:
        if p.is_alive():
            p.kill()
            p.join(5)
    assert not hung, f"rank(s) {hung} still running after {TIMEOUT_S} s: a hang"
    results = [json.loads(o.read_text()) for o in outs]
    for r, res in enumerate(results):
        assert "crash" not in res, f"rank {r} crashed:\n{res['crash']}"
    return results


# -- sharded peel scenarios (run inside the ranks) ------------------------------------------------


def _peel_scenarios(rank: int, world: int, arg: str) -> dict[str, Any]:
    from layerpeel.distributed import RankFailure
    from layerpeel.peel import run as run_module

    out: dict[str, Any] = {}
    for quant in ("", "ternary"):
        report = peel(tiny_model(quant or None), tiny_data(), CFG, sharded=True)
        out[f"report-{quant or 'fp'}"] = report.to_dict()
    # the launcher told rank 1 of a different world size
    if rank == 1:
        os.environ["WORLD_SIZE"] = "3"
    try:
        peel(tiny_model(), tiny_data(), CFG, sharded=True)
        out["mismatch"] = None
    except ShardingError as exc:
        out["mismatch"] = str(exc)
    os.environ.pop("WORLD_SIZE", None)
    # rank 1's analysis fails: both ranks hear of it, nobody waits
    original = run_module.block_gaps
    if rank == 1:

        def broken(*args: Any, **kwargs: Any) -> Any:
            raise RuntimeError("injected failure")

        run_module.block_gaps = broken
    try:
        peel(tiny_model(), tiny_data(), CFG, sharded=True)
        out["failure"] = None
    except RankFailure as exc:
        out["failure"] = {
            "message": str(exc),
            "kept": sorted(exc.results),
            "failed": sorted(exc.failures),
        }
    run_module.block_gaps = original
    # still in step afterwards: one more analysis works
    out["after"] = peel(tiny_model(), tiny_data(), CFG, sharded=True).to_dict()
    return out


@pytest.fixture(scope="module")
def peel_ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    return run_ranks("_peel_scenarios", tmp_path_factory.mktemp("peel"))


@pytest.mark.slow
@pytest.mark.parametrize("quant", ["", "ternary"])
def test_two_gloo_ranks_give_the_single_process_report(peel_ranks, quant):
    ref = peel(tiny_model(quant or None), tiny_data(), CFG).to_dict()
    assert ref["layers"] and ref["ladder"] and ref["cascade"]["subsets"]
    for rank, seen in enumerate(peel_ranks):
        got = seen[f"report-{quant or 'fp'}"]
        assert same(ref, got) == [], f"rank {rank}"
        assert set(got["timings"]) == set(ref["timings"]) | {"gather"}


@pytest.mark.slow
def test_mismatched_world_sizes_are_named_on_every_rank(peel_ranks):
    for seen in peel_ranks:
        msg = seen["mismatch"]
        assert msg is not None and "rank 1 of 2" in msg and "launcher_world_size 3" in msg


@pytest.mark.slow
def test_a_failure_on_one_rank_is_reported_by_both_and_nobody_hangs(peel_ranks):
    ref = peel(tiny_model(), tiny_data(), CFG).to_dict()
    for seen in peel_ranks:
        failure = seen["failure"]
        assert failure is not None
        assert "rank 1: RuntimeError: injected failure" in failure["message"]
        assert failure["failed"] == [1] and failure["kept"] == [0]
        assert same(ref, seen["after"]) == []


def test_sharding_without_a_process_group_is_a_clear_error():
    with pytest.raises(ShardingError, match="no torch.distributed process group is initialised"):
        peel(tiny_model(), tiny_data(), CFG, sharded=True)


def test_a_distributed_monitor_without_a_process_group_is_a_clear_error(tmp_path):
    from layerpeel.monitor import Monitor

    with pytest.raises(ShardingError, match="no torch.distributed process group"):
        Monitor(tiny_model(), tiny_data(), tmp_path, distributed=True)


def test_cli_shard_outside_torchrun_is_one_line_and_exit_2(tmp_path, capsys, monkeypatch):
    for var in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(var, raising=False)
    assert main(["analyze", str(tmp_path), "--shard"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "torchrun" in err


# -- the plan -------------------------------------------------------------------------------------


def best_makespan(costs: list[float], world: int) -> float:
    """Exhaustive optimum of assigning units to ranks, the reference of the greedy plan."""
    best = math.inf
    for assign in itertools.product(range(world), repeat=len(costs)):
        loads = [0.0] * world
        for c, r in zip(costs, assign, strict=True):
            loads[r] += c
        best = min(best, max(loads))
    return best


def test_plan_gives_every_unit_to_one_rank_within_the_greedy_bound():
    model, data = tiny_model(), tiny_data()
    for world in (1, 2, 3):
        a, plan = plan_analysis(model, data, CFG, world)
        assigned = sorted(i for r in plan.ranks for i in r)
        assert assigned == list(range(len(plan.units)))  # each unit exactly once
        loads = [plan.load(r) for r in range(world)]
        opt = best_makespan([u.cost for u in plan.units[:9]], world) if world < 3 else None
        if opt is not None and len(plan.units) <= 9:
            assert max(loads) <= (4 / 3) * opt + 1e-9  # LPT's guarantee (Graham)
        assert plan.digest() == plan_analysis(model, data, CFG, world)[1].digest()
    costs = [7.0, 5.0, 4.0, 4.0, 3.0, 3.0, 3.0, 1.0]
    plan = make_plan([Unit("p1", (i,), c) for i, c in enumerate(costs)], 3)
    assert max(plan.load(r) for r in range(3)) <= (4 / 3) * best_makespan(costs, 3)
    assert plan.balance < 1.2


@pytest.mark.parametrize(
    ("n_layer", "flag", "cascade"),
    [(8, None, True), (9, None, False), (9, "--cascade", True), (8, "--no-cascade", False)],
)
def test_the_cascade_is_off_by_default_above_eight_blocks(n_layer, flag, cascade, caplog):
    from layerpeel.cli import build_parser
    from layerpeel.peel.config import from_args

    args = build_parser().parse_args(["analyze", "run", *([flag] if flag else [])])
    cfg = dataclasses.replace(from_args(args), n_boot=64, search_sequences=4, batch=4)
    model = GPT(GPTConfig(vocab_size=48, n_layer=n_layer, n_head=2, d_model=16))
    with caplog.at_level("INFO", logger="layerpeel.peel.plan"):
        _, plan = plan_analysis(model, tiny_data(), cfg, 1)
    assert any(u.phase == "p3" for u in plan.units) == cascade
    said = [r for r in caplog.records if "cascade off" in r.getMessage()]
    assert len(said) == (flag is None and not cascade)  # the reason, once, when it was not asked


def test_plan_costs_follow_the_work_each_unit_does():
    model, data = tiny_model(), tiny_data()
    _, plan = plan_analysis(model, data, CFG, 2)
    p1 = [u.cost for u in plan.units if u.phase == "p1"]
    p2 = [u.cost for u in plan.units if u.phase == "p2"]
    assert p1 == sorted(p1, reverse=True)  # later blocks have shorter tails to score through
    assert p2 == sorted(p2, reverse=True)  # ladder row l has L - l targets
    _, alone = plan_analysis(model, data, CFG, 1)
    p3 = {u.key: u.subsets for u in alone.units if u.phase == "p3"}
    assert p3 == {(): ((),), (1,): ((1,), (1, 2)), (2,): ((2,),)}  # by first anchor
    # many ranks: a group costlier than a rank's share is split by its second anchor
    deep = GPT(GPTConfig(vocab_size=48, n_layer=6, n_head=2, d_model=16))
    few = {u.key for u in plan_analysis(deep, data, CFG, 1)[1].units if u.phase == "p3"}
    many = {
        u.key: u.subsets for u in plan_analysis(deep, data, CFG, 16)[1].units if u.phase == "p3"
    }
    assert few == {(), (1,), (2,), (3,), (4,), (5,)}
    assert many[(1, 2)] == (
        (1, 2),
        (1, 2, 3),
        (1, 2, 4),
        (1, 2, 5),
        (1, 2, 3, 4),
        (1, 2, 3, 5),
        (1, 2, 4, 5),
        (1, 2, 3, 4, 5),
    )


# -- the CLI under torchrun -----------------------------------------------------------------------


@pytest.fixture
def run_dir(tmp_path, tiny_corpus):
    from layerpeel.training.trainer import TrainConfig, Trainer

    cfg = TrainConfig(data=str(tiny_corpus), max_steps=4, batch_size=4, eval_every=4, log_every=2)
    tiny = GPTConfig(vocab_size=256, n_layer=2, n_head=2, d_model=16, block_size=16)
    Trainer.create(tmp_path / "run", tiny, QuantConfig(), cfg).fit()
    return tmp_path / "run"


@pytest.mark.slow
def test_torchrun_two_processes_write_the_single_process_json(run_dir, tmp_path, capsys):
    args = ["analyze", str(run_dir), "--tokens", "192", "--no-progress", "--seed", "3"]
    assert main([*args, "--json", str(tmp_path / "one.json")]) == 0
    capsys.readouterr()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    done = subprocess.run(
        [*cmd, "-m", "layerpeel", *args, "--json", str(tmp_path / "two.json")],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("P1 layer gaps") == 1  # only rank 0 prints
    one = json.loads((tmp_path / "one.json").read_text())
    two = json.loads((tmp_path / "two.json").read_text())
    assert same(one, two) == []
    assert one["ladder"] and one["cascade"]


# -- the monitor inside DDP training --------------------------------------------------------------


def _ddp_train(
    rank: int, run_dir: str | None, fail: bool, fsdp: bool = False
) -> tuple[dict[str, torch.Tensor], Any]:
    """Six DDP (or FSDP) steps of a tiny GPT with dropout; a monitor analysing every other step."""
    from torch.distributed.fsdp import fully_shard
    from torch.nn.parallel import DistributedDataParallel

    from layerpeel.monitor import Monitor, MonitorConfig, every
    from layerpeel.peel import run as run_module

    torch.manual_seed(0)
    model = GPT(
        GPTConfig(vocab_size=48, n_layer=2, n_head=2, d_model=16, block_size=12, dropout=0.1)
    )
    ddp: Any = model
    if fsdp:
        for block in model.blocks:
            fully_shard(block)
        fully_shard(model)
    else:
        ddp = DistributedDataParallel(model)
    opt = torch.optim.AdamW(ddp.parameters(), lr=1e-2)
    monitor = None
    if run_dir is not None:
        cfg = MonitorConfig(preset="standard", warmup=2, max_overhead=None, max_failures=5)
        cfg.peel = CFG
        monitor = Monitor(model, tiny_data(), run_dir, cfg, schedule=every(2))
    original = run_module.block_gaps
    if fail and rank == 1:

        def broken(*args: Any, **kwargs: Any) -> Any:
            raise RuntimeError("injected failure")

        run_module.block_gaps = broken
    torch.manual_seed(100 + rank)  # each rank its own dropout and batches
    try:
        for step in range(1, 7):
            x = torch.randint(0, 48, (4, 13))
            loss = model.loss.__func__(ddp, x[:, :-1], x[:, 1:])  # type: ignore[attr-defined]
            opt.zero_grad()
            loss.backward()
            opt.step()
            if monitor is not None:
                monitor.step(step, train_loss=loss)
    finally:
        run_module.block_gaps = original
    local = {
        n: getattr(p, "to_local", p.detach)().detach().clone() for n, p in model.named_parameters()
    }
    return local, monitor


def _ddp_scenarios(rank: int, world: int, arg: str) -> dict[str, Any]:
    plain, _ = _ddp_train(rank, None, False)
    watched, monitor = _ddp_train(rank, f"{arg}/watched", False)
    failing, fmon = _ddp_train(rank, f"{arg}/failing", True)

    def equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
        return all(torch.equal(a[k], b[k]) for k in a)

    fsdp_plain, _ = _ddp_train(rank, None, False, fsdp=True)
    fsdp_watched, fsdp_mon = _ddp_train(rank, f"{arg}/fsdp", False, fsdp=True)
    whole = {n: p.full_tensor() for n, p in fsdp_mon.model.named_parameters()}  # collective
    if rank == 0:
        from safetensors.torch import save_file

        save_file({n: t.contiguous() for n, t in whole.items()}, f"{arg}/fsdp-final.safetensors")
    return {
        "fsdp_same_with_monitor": equal(fsdp_plain, fsdp_watched),
        "fsdp_analyses": fsdp_mon.analyses,
        "fsdp_failures": fsdp_mon.failures,
        "same_with_monitor": equal(plain, watched),
        "same_with_failing_monitor": equal(plain, failing),
        "analyses": monitor.analyses,
        "failures": [monitor.failures, fmon.failures],
        "enabled": fmon.enabled,
        "checksum": float(sum(p.double().sum() for p in plain.values())),
    }


@pytest.fixture(scope="module")
def ddp_ranks(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[dict[str, Any]], Path]:
    tmp = tmp_path_factory.mktemp("ddp")
    return run_ranks("_ddp_scenarios", tmp, str(tmp)), tmp


@pytest.mark.slow
def test_ddp_training_ends_bit_identical_with_the_monitor(ddp_ranks):
    ranks, tmp = ddp_ranks
    assert ranks[0]["checksum"] == ranks[1]["checksum"]  # DDP kept the replicas equal
    for seen in ranks:
        assert seen["same_with_monitor"] and seen["same_with_failing_monitor"]
        assert seen["analyses"] == 3  # steps 2, 4 and 6, decided alike on both ranks
    from layerpeel.monitor import read_events

    events = read_events(tmp / "watched" / "monitor.jsonl")  # written by rank 0 alone
    assert [e["step"] for e in events] == [2, 4, 6]
    assert events[0]["unit"] == "sweep"
    assert {(r["block"], r["part"]) for r in events[0]["report"]["layers"]} == {
        (b, p) for b in (0, 1) for p in ("block", "attn", "mlp")
    }


@pytest.mark.slow
def test_fsdp_training_ends_bit_identical_and_the_monitor_sees_whole_parameters(ddp_ranks):
    ranks, tmp = ddp_ranks
    from layerpeel.monitor import read_events

    for seen in ranks:
        assert seen["fsdp_same_with_monitor"]  # every rank's shard, torch.equal
        assert seen["fsdp_analyses"] == 3 and seen["fsdp_failures"] == 0
    events = read_events(tmp / "fsdp" / "monitor.jsonl")
    assert [e["step"] for e in events] == [2, 4, 6]
    assert events[0]["report"]["model"]["params"] == sum(
        p.numel()
        for p in GPT(
            GPTConfig(vocab_size=48, n_layer=2, n_head=2, d_model=16, block_size=12)
        ).parameters()
    )  # the whole model, not one rank's shard
    # the analysis at step 6 equals one process analysing the whole weights of step 6
    from safetensors.torch import load_file

    model = GPT(
        GPTConfig(vocab_size=48, n_layer=2, n_head=2, d_model=16, block_size=12, dropout=0.1)
    )
    missing, unexpected = model.load_state_dict(
        load_file(str(tmp / "fsdp-final.safetensors")), strict=False
    )
    assert not unexpected and len(missing) <= 1  # at most the tied unembedding's second name
    last = events[2]["report"]
    from layerpeel.peel.evidence import Trend

    trend = Trend(**last["verdict"]["trend"])  # the loss trend the monitor saw up to step 6
    ref = peel(model, tiny_data(), PeelConfig.from_dict(last["config"]), trend=trend).to_dict()
    assert ref["layers"] and same(ref, last) == []


@pytest.mark.slow
def test_a_monitor_failure_on_one_rank_does_not_hang_the_other(ddp_ranks):
    ranks, tmp = ddp_ranks
    from layerpeel.monitor import read_events

    for seen in ranks:  # both ranks counted the failure of rank 1 and trained on
        assert seen["failures"] == [0, 3] and seen["enabled"]
    events = read_events(tmp / "failing" / "monitor.jsonl")
    errors = [e for e in events if e["event"] == "error"]
    assert [e["step"] for e in errors] == [2, 4, 6]
    assert "rank 1: RuntimeError: injected failure" in errors[0]["message"]
    assert (tmp / "failing" / errors[0]["traceback"]).exists()
