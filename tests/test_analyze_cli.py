"""`layerpeel analyze`: the JSON it writes, the table it prints, and every bad input it refuses."""

import json

import pytest

from layerpeel.cli import main
from layerpeel.models import GPTConfig
from layerpeel.peel.report import PeelReport
from layerpeel.quant import QuantConfig
from layerpeel.training.checkpoint import list_checkpoints
from layerpeel.training.trainer import TrainConfig, Trainer

TINY = GPTConfig(vocab_size=256, n_layer=2, n_head=2, d_model=32, block_size=16)
FAST = ["--tokens", "256", "--no-progress", "--no-ladder"]


@pytest.fixture
def run_dir(tmp_path, tiny_corpus):
    cfg = TrainConfig(
        data=str(tiny_corpus),
        max_steps=8,
        batch_size=4,
        lr=1e-2,
        warmup_steps=2,
        eval_every=4,
        eval_sequences=8,
        log_every=2,
        checkpoint_every=4,
    )
    Trainer.create(tmp_path / "run", TINY, QuantConfig(scheme="ternary"), cfg).fit()
    return tmp_path / "run"


def cli(*args):
    return main([str(a) for a in args])


def test_analyze_writes_the_report_and_prints_the_table(run_dir, tmp_path, capsys):
    out = tmp_path / "r.json"
    assert cli("analyze", run_dir, "--json", out, *FAST) == 0
    text = capsys.readouterr().out
    data = json.loads(out.read_text())
    assert json.loads((run_dir / "analysis" / "step-000008.json").read_text()) == data
    assert data["model"]["step"] == 8 and data["model"]["quant"] == "ternary"
    assert len(data["layers"]) == 2 * 3
    for row in data["layers"]:
        assert row["verdict"] in ("green", "yellow", "red")
        assert row["verdict"] in text  # the word is printed with each row, colour or not
        assert row["ci_low"] <= row["gap"] <= row["ci_high"]
        assert {"opt_part", "quant_part"} <= set(row)
        if row["part"] == "block":  # whole blocks carry their work (2 blocks: no idle verdict)
            assert row["work_ci_low"] <= row["work"] <= row["work_ci_high"]
            assert row["idle"] is False
    assert "work" in text
    report = PeelReport.from_dict(data)
    top = report.in_order()[0]
    first = f"first to look at: block {top.block} {top.part} ({top.verdict};"
    # the first row is named when its block is behind, or it is not green while the whole model
    # is not still training (while it is, no one block is to blame)
    whole = report.whole()
    named = top.block in whole.behind or (
        top.verdict != "green" and "still training" not in whole.answers
    )
    assert (first in text) == named
    assert [(r["block"], r["part"]) for r in data["ranking"]][0] == (top.block, top.part)
    assert data["verdict"]["question"] in text and data["verdict"]["sentence"] in text
    assert "\033[" not in text  # no colour codes when stdout is not a terminal
    assert data["cascade"]["verdict"] in ("green", "yellow", "red")


def test_an_unchanged_checkpoint_with_the_same_settings_is_not_analysed_again(
    run_dir, tmp_path, capsys
):
    saved = run_dir / "analysis" / "step-000008.json"
    args = [run_dir, *FAST, "--no-cascade"]
    assert cli("analyze", *args) == 0
    first, stamp = saved.read_text(), saved.stat().st_mtime_ns
    capsys.readouterr()
    out = tmp_path / "copy.json"
    assert cli("analyze", *args, "--json", out) == 0
    text = capsys.readouterr().out
    assert "reused" in text and "P1 layer gaps" in text
    assert saved.stat().st_mtime_ns == stamp and json.loads(out.read_text()) == json.loads(first)
    # other settings are analysed anew
    assert cli("analyze", *args, "--red", "0.5") == 0
    assert "reused" not in capsys.readouterr().out
    assert json.loads(saved.read_text())["config"]["red"] == 0.5


def test_an_older_checkpoint_is_analysed_as_itself(run_dir, capsys):
    first = list_checkpoints(run_dir / "checkpoints")[0]
    assert cli("analyze", first, *FAST, "--no-cascade") == 0
    data = json.loads((run_dir / "analysis" / "step-000004.json").read_text())
    assert data["model"]["step"] == 4 and data["cascade"] is None


def test_fail_on_red_sets_the_exit_code(run_dir, capsys):
    # a red threshold below any possible interval end makes every row red
    code = cli("analyze", run_dir, *FAST, "--no-cascade", "--red=-1e9", "--fail-on", "red")
    assert code == 1
    assert "red" in capsys.readouterr().out


def test_attribute_rechecks_the_reds_after_the_first(run_dir, tmp_path, capsys):
    # every row red: block 0 is fixed first, block 1's rows are measured again with it in place
    out = tmp_path / "a.json"
    code = cli(
        "analyze", run_dir, *FAST, "--no-cascade", "--red=-1e9", "--attribute", "--json", out
    )
    assert code == 0
    data = json.loads(out.read_text())
    assert data["config"]["attribute"] is True and "attribution" in data["timings"]
    assert [r["block"] for r in data["layers"] if r.get("fixed_first")] == [0]
    later = [r for r in data["layers"] if r["block"] == 1]
    assert later and all("gap_given_first" in r and r["verdict"] == "red" for r in later)


def _one_line_error(capsys, needle):
    err = capsys.readouterr().err
    assert err.startswith("layerpeel: error:") and err.count("\n") == 1, err
    assert needle in err, err
    assert "Traceback" not in err


def test_bad_inputs_exit_2_with_one_line_and_no_json(run_dir, tmp_path, capsys):
    out = tmp_path / "never.json"
    short = tmp_path / "short.txt"
    short.write_text("too short")
    cases = [
        (["analyze", tmp_path / "nothing", "--json", out], "no run folder"),
        (["analyze", run_dir, "--json", out, "--data", short, *FAST], "sequence"),
        (["analyze", run_dir, "--json", out, "--budget-mb", "0", *FAST], "budget"),
        (["analyze", run_dir, "--json", out, "--solver", "newton", *FAST], "solver"),
        (["analyze", run_dir, "--json", out, "--blocks", "7", *FAST], "blocks"),
        (["analyze", run_dir, "--json", out, "--etas", "0,big", *FAST], "--etas"),
        (["analyze", run_dir, "--json", out, "--search-sequences", "0", *FAST], "line search"),
        (["analyze", run_dir, "--json", out, "--idle=-0.5", *FAST], "idle"),
    ]
    for args, needle in cases:
        assert cli(*args) == 2, args
        _one_line_error(capsys, needle)
        assert not out.exists()
    # a checkpoint whose weights do not fit its config, as the run's latest
    ckpt = list_checkpoints(run_dir / "checkpoints")[-1]
    meta = json.loads(ckpt.read_text())
    meta["model"]["d_model"] = 64
    bad_ckpt = ckpt.with_name("step_0000099.json")
    bad_ckpt.write_text(json.dumps(meta))
    for name in (".safetensors", ".optim.safetensors"):
        src = ckpt.with_name(ckpt.stem + name)
        bad_ckpt.with_name(bad_ckpt.stem + name).write_bytes(src.read_bytes())
    for target in (bad_ckpt, run_dir):
        assert cli("analyze", target, "--json", out, *FAST) == 2
        _one_line_error(capsys, "does not match")
    assert not out.exists()
    assert not (run_dir / "analysis").exists()


def test_a_memory_budget_too_small_names_the_budget(run_dir, tmp_path, capsys):
    from layerpeel.arch.capture import MemoryBudgetError
    from layerpeel.peel.analysis import PeelConfig, load_target, monitoring_from_run, peel

    target = load_target(run_dir)
    mset = monitoring_from_run(target.run, n_tokens=512)
    with pytest.raises(MemoryBudgetError, match="budget"):
        peel(target.model, mset, PeelConfig(budget_mb=1e-3))


def test_every_setting_is_a_flag_and_reads_back():
    """The flags are derived from PeelConfig: each setting, set on the command line, arrives."""
    import argparse
    import dataclasses

    from layerpeel.peel.config import PeelConfig, add_arguments, from_args

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert from_args(parser.parse_args([])) == PeelConfig()
    args = ["--solver", "adam", "--parts", "block,mlp", "--blocks", "0,2", "--no-ladder"]
    args += ["--no-cascade", "--max-anchors", "1", "--cascade-target", "trained", "--red", "0.1"]
    args += ["--yellow", "0.01", "--no-work", "--idle", "0", "--etas", "0,0.5"]
    args += ["--search-sequences", "8", "--search-stride", "2", "--ridge", "0.01"]
    args += ["--adam-steps", "5", "--adam-lr", "0.1"]
    args += ["--n-boot", "10", "--batch", "2", "--score-dtype", "bfloat16", "--budget-mb", "64"]
    args += ["--seed", "3", "--attribute"]
    cfg = from_args(parser.parse_args(args))
    changed = {f.name for f in dataclasses.fields(cfg) if getattr(cfg, f.name) != f.default}
    assert changed == {f.name for f in dataclasses.fields(PeelConfig)}
    assert cfg.blocks == (0, 2) and cfg.etas == (0.0, 0.5) and cfg.parts == ("block", "mlp")


def test_every_p1_solver_setting_dispatches_to_a_solver():
    from layerpeel.peel.config import SOLVERS
    from layerpeel.peel.gap import P1_SOLVERS

    assert set(P1_SOLVERS) == set(SOLVERS)
