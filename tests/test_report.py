import json
import math
import shutil
import socket
import urllib.error
import urllib.request

import pytest

from layerpeel.cli import main
from layerpeel.errors import LayerpeelError
from layerpeel.io import append_jsonl
from layerpeel.peel.report import PeelReport
from layerpeel.report.figures import write_figures
from layerpeel.report.html import render_html, write_report
from layerpeel.report.payload import build_payload
from layerpeel.report.reader import JsonlFollower
from layerpeel.report.results import RunReader, read_results
from layerpeel.report.server import Dashboard
from report_runs import analysed_run, analysis_event, write_analysis

SEVERITY = {"green": 1, "yellow": 2, "red": 3}


@pytest.fixture(scope="module")
def real_run(tmp_path_factory):
    """A tiny binary-weight GPT run with genuine peel reports at steps 4 (file), 8 (event), 12 (file)."""
    return analysed_run(tmp_path_factory.mktemp("real"))


@pytest.fixture
def run_copy(real_run, tmp_path):
    run, reports = real_run
    dest = tmp_path / "run"
    shutil.copytree(run, dest, ignore=shutil.ignore_patterns("checkpoints"))
    return dest, reports


def embedded(html: str) -> dict:
    start = html.index('<script id="layerpeel-data" type="application/json">')
    start = html.index(">", start) + 1
    return json.loads(html[start : html.index("</script>", start)])


# ----------------------------------------------------------------------------- reading


def test_follower_waits_for_a_torn_line_and_resets_on_truncation(tmp_path):
    path = tmp_path / "m.jsonl"
    follow = JsonlFollower(path)
    assert follow.read() == ([], False)  # no file yet
    path.write_text('{"a": 1}\n{"a": 2')
    assert follow.read() == ([{"a": 1}], False)
    assert follow.torn and "mid-write" in follow.notes()[0]
    with open(path, "a") as fh:
        fh.write('}\nnot json\n[1]\n{"a": 3}\n')
    rows, reset = follow.read()
    assert rows == [{"a": 2}, {"a": 3}] and not reset
    assert follow.notes() == ["m.jsonl line 3: not JSON", "m.jsonl line 4: not a JSON object"]
    path.write_text('{"a": 9}\n')  # a resumed run rewrites its metrics shorter
    assert follow.read() == ([{"a": 9}], True)
    path.write_text('{"a": 9}\n{"b": 1}')  # one-shot readers take a whole unterminated line
    assert follow.read(final=True) == ([{"b": 1}], False)


def test_results_hold_every_analysis_with_the_json_values(real_run):
    run, reports = real_run
    res = read_results(run)
    assert [a.step for a in res.analyses] == sorted(reports)
    assert res.notes == []
    sources = [a.source for a in res.analyses]
    assert sources[0].startswith("analysis/") and sources[1].startswith("monitor.jsonl")
    for a in res.analyses:
        want = reports[a.step]
        assert [(r["block"], r["part"], r["gap"], r["verdict"]) for r in a.layers] == [
            (r["block"], r["part"], r["gap"], r["verdict"]) for r in want["layers"]
        ]
        assert a.cascade is not None and a.cascade["yes"] == want["cascade"]["yes"]
        assert len(a.ladder) == len(want["ladder"])


def test_page_data_matches_the_json(real_run):
    run, reports = real_run
    data = build_payload(read_results(run))
    steps = sorted(reports)
    last = reports[steps[-1]]
    # table: the latest rows, values as in the JSON (rounded to 6 significant digits)
    assert len(data["table"]) == len(last["layers"])
    for row, want in zip(data["table"], last["layers"], strict=True):
        assert (row["block"], row["part"], row["verdict"], row["step"]) == (
            want["block"],
            want["part"],
            want["verdict"],
            steps[-1],
        )
        assert row["gap"] == pytest.approx(want["gap"], rel=1e-5, abs=1e-12)
        assert row["quant_part"] == pytest.approx(want["quant_part"], rel=1e-5, abs=1e-12)
        if want["part"] == "block":
            assert row["work"] == pytest.approx(want["work"], rel=1e-5, abs=1e-12)
            assert row["idle"] == want["idle"]
    # heatmap: one verdict letter per checkpoint, in step order
    hm = data["heatmap"]
    assert hm["steps"] == steps
    for want_row in last["layers"]:
        line = hm["verdict"][want_row["part"]][want_row["block"]]
        assert line == "".join(
            next(
                r["verdict"][0]
                for r in reports[s]["layers"]
                if (r["block"], r["part"]) == (want_row["block"], want_row["part"])
            )
            for s in steps
        )
    # cloud: the recorded CE values in nats (a language model's loss), and the recorded verdicts
    cloud = data["cloud"]
    assert cloud["steps"] == steps and cloud["unit"] == "nats"
    for i, s in enumerate(steps):
        c = reports[s]["cascade"]
        assert cloud["trained"][i] == pytest.approx(c["ce_trained"], rel=1e-5)
        assert cloud["yes0"][i] == pytest.approx(c["yes0"], rel=1e-5)
        assert cloud["verdict"][i] == c["verdict"]
    # headline: the worst of the whole-model verdict and the latest layer verdicts
    worst = max(
        [last["cascade"]["verdict"]] + [r["verdict"] for r in last["layers"]],
        key=SEVERITY.__getitem__,
    )
    assert data["headline"]["verdict"] == worst
    # ladder: CE(l -> j) in place
    for r in last["ladder"]:
        assert data["ladder"]["ce"][r["from_block"]][r["to_block"]] == pytest.approx(r["ce"], 1e-5)
    assert data["settings"]["monitoring_hashes"] == [last["monitoring"]["sha256"]]


def test_a_file_replaces_the_monitor_rows_of_the_same_step(run_copy):
    run, reports = run_copy
    step = sorted(reports)[1]  # present as a monitor event
    changed = json.loads(json.dumps(reports[step]))
    changed["layers"][0]["verdict"] = "red"
    changed["layers"][0]["gap"] = 0.5
    write_analysis(run, step, changed)
    (a,) = [a for a in read_results(run).analyses if a.step == step]
    assert a.layers[0]["gap"] == 0.5 and len(a.layers) == len(changed["layers"])
    assert "monitor.jsonl" in a.source and "analysis/" in a.source


def test_an_idle_block_is_named_as_idle_in_the_summary(run_copy):
    run, reports = run_copy
    step = sorted(reports)[-1]
    changed = json.loads(json.dumps(reports[step]))
    for r in changed["layers"]:  # only block 0 idle, whatever this tiny run found
        r.update(idle=False, verdict="green")
    row = next(r for r in changed["layers"] if r["part"] == "block")
    row.update(verdict="red", idle=True, work=0.0012)
    # the report's whole-model verdict, judged again from the changed rows
    changed.pop("verdict", None)
    changed["verdict"] = PeelReport.from_dict(changed).whole().to_dict()
    write_analysis(run, step, changed)
    data = build_payload(read_results(run))
    assert data["headline"]["verdict"] == "red" and data["headline"]["scale"] == "whole"
    assert f"block {row['block']} does almost no work" in data["headline"]["sentence"]
    assert data["headline"]["question"] == changed["verdict"]["question"]
    (shown,) = [r for r in data["table"] if (r["block"], r["part"]) == (row["block"], "block")]
    assert shown["idle"] is True and shown["work"] == pytest.approx(0.0012)


def test_an_explained_row_reaches_the_page_with_the_block_that_explains_it(run_copy):
    run, reports = run_copy
    step = sorted(reports)[-1]
    changed = json.loads(json.dumps(reports[step]))
    row = next(r for r in changed["layers"] if r["block"] > 0)
    row.update(verdict="yellow", explained_by=0, gap_given_first=0.0042)
    write_analysis(run, step, changed)
    data = build_payload(read_results(run))
    (shown,) = [r for r in data["table"] if (r["block"], r["part"]) == (row["block"], row["part"])]
    assert shown["explained_by"] == 0 and shown["gap_given_first"] == pytest.approx(0.0042)
    others = [r for r in data["table"] if (r["block"], r["part"]) != (row["block"], row["part"])]
    assert all(r["explained_by"] is None for r in others)


# ----------------------------------------------------------------------------- bad input


def test_empty_run_folder_gives_a_report_that_says_so(tmp_path, capsys):
    run = tmp_path / "empty"
    run.mkdir()
    (run / "metrics.jsonl").write_text("")  # a run that has started, with nothing analysed yet
    assert main(["report", str(run)]) == 0
    out = capsys.readouterr().out
    assert "no analysis" in out and str(run / "report.html") in out
    data = embedded((run / "report.html").read_text())
    assert data["kind"] == "empty" and data["headline"]["verdict"] == "unknown"
    assert data["headline"]["sentence"].startswith("No analysis yet")


def test_missing_run_folder_is_a_one_line_error(tmp_path, capsys):
    assert main(["report", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("layerpeel: error: run folder not found") and "\n" not in err


def test_torn_last_line_is_skipped_and_named(run_copy):
    run, reports = run_copy
    line = json.dumps(analysis_event(99, reports[sorted(reports)[-1]]))
    with open(run / "monitor.jsonl", "a") as fh:
        fh.write(line[: len(line) // 2])  # the run was killed mid-write
    path, res = write_report(run)
    assert [a.step for a in res.analyses] == sorted(reports)
    assert any("mid-write" in n for n in res.notes)
    assert embedded(path.read_text())["skipped"] == res.notes


def test_older_and_newer_formats(run_copy):
    run, reports = run_copy
    old = json.loads(json.dumps(reports[sorted(reports)[0]]))
    del old["format_version"]
    del old["layers"][0]["gap"]  # a row the views cannot place
    for row in old["layers"]:
        row.pop("ci_low")
        row.pop("ci_high")
    write_analysis(run, 2, old)
    newer = json.loads(json.dumps(old))
    newer["format_version"] = 99
    write_analysis(run, 3, newer)
    (run / "analysis" / "step-000001.json").write_text('{"format": "layerpeel-peel-re')
    res = read_results(run)
    steps = [a.step for a in res.analyses]
    assert 2 in steps and 3 not in steps and 1 not in steps
    (two,) = [a for a in res.analyses if a.step == 2]
    assert len(two.layers) == len(old["layers"]) - 1
    assert all(r["ci_low"] is None for r in two.layers)
    text = "\n".join(res.notes)
    assert "step-000002.json: older peel-report format (unversioned)" in text
    assert "step-000002.json: skipped 1 layer row(s)" in text
    assert "step-000003.json: written in peel-report format 99" in text
    assert "step-000001.json: unreadable JSON" in text
    html = render_html(build_payload(res))
    assert embedded(html)["heatmap"]["steps"] == steps


def test_report_is_self_contained(real_run, tmp_path):
    run, _ = real_run
    path, _ = write_report(run, tmp_path / "r.html")
    html = path.read_text().replace('"http://www.w3.org/2000/svg"', "")  # a name, not a fetch
    for needle in ("<link", " src=", "http://", "https://", "@import", "url("):
        assert needle not in html, needle
    assert "default-src 'none'" in html  # the page may not load anything
    with pytest.raises(LayerpeelError, match="is a folder"):
        write_report(run, tmp_path)


def test_figures_are_written_as_png_and_svg(real_run, tmp_path):
    run, _ = real_run
    paths = write_figures(build_payload(read_results(run)), tmp_path / "figs")
    names = sorted(p.name for p in paths)
    assert names == sorted(
        f"{stem}.{ext}"
        for stem in ("yes_cloud", "heatmap_block", "heatmap_attn", "heatmap_mlp", "ladder")
        for ext in ("png", "svg")
    )
    for p in paths:
        head = p.read_bytes()[:8]
        assert head == b"\x89PNG\r\n\x1a\n" if p.suffix == ".png" else b"<svg" in p.read_bytes()


def test_cli_report_with_figures(real_run, tmp_path, capsys):
    run, _ = real_run
    out = tmp_path / "x.html"
    assert main(["report", str(run), "-o", str(out), "--figures", str(tmp_path / "f")]) == 0
    text = capsys.readouterr().out
    assert f"report: {out}" in text and (tmp_path / "f" / "ladder.svg").exists()
    # the last lines say how to open it
    assert text.strip().splitlines()[-2:] == [
        f"open it in a browser: {out.resolve().as_uri()}",
        f"or follow the run live: layerpeel serve {run}",
    ]


# ----------------------------------------------------------------------------- MLP runs


def test_mlp_yes_demo_run(tmp_path):
    from layerpeel.yes.paper import YesDemoConfig, run_yes_demo

    result = run_yes_demo(YesDemoConfig(task="synthetic", epochs=3, n_samples=200), tmp_path / "y")
    data = build_payload(read_results(result.out_dir))
    assert data["kind"] == "mlp" and data["cloud"]["x_label"] == "epoch"
    rows = result.rows
    assert data["cloud"]["steps"] == [r["epoch"] for r in rows]
    for i, r in enumerate(rows):
        assert data["cloud"]["trained"][i] == pytest.approx(10 * math.log10(r["train_loss"]), 1e-5)
        assert data["cloud"]["yes"][i][-1] == pytest.approx(10 * math.log10(r["yes_min"][-1]), 1e-5)
    assert data["headline"]["verdict"] == rows[-1]["verdict"]
    assert data["heatmap"] is None and data["table"] == []


def test_monitor_yes_events_in_db(tmp_path):
    run = tmp_path / "mlp"
    events = [
        {"event": "yes", "step": 10, "time": 0, "loss": 5.0, "yes0": 4.0, "yes": [3.0, 2.0], "verdict": "red", "db": True},
        {"event": "yes", "step": 20, "time": 0, "loss": 2.5, "yes0": 4.0, "yes": [3.0, 2.0], "verdict": "yellow", "db": True},
        {"event": "yes", "step": 30, "time": 0, "loss": "nan?", "yes0": 4.0, "yes": [3.0], "verdict": "x", "db": True},
        {"event": "new-kind", "step": 30},
    ]  # fmt: skip
    for e in events:
        append_jsonl(run / "monitor.jsonl", e)
    res = read_results(run)
    data = build_payload(res)
    assert data["cloud"]["steps"] == [10, 20] and data["cloud"]["trained"] == [5.0, 2.5]
    assert data["cloud"]["verdict"] == ["red", "yellow"] and data["headline"]["verdict"] == "yellow"
    assert any("skipped 1 YES check" in n for n in res.notes)
    assert any("unknown event" in n for n in res.notes)


# ----------------------------------------------------------------------------- dashboard


def _get(url):
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, b""


def test_dashboard_follows_the_jsonl(run_copy):
    run, reports = run_copy
    steps = sorted(reports)
    (run / "monitor.jsonl").unlink()
    dash = Dashboard(run, port=0).start()
    try:
        assert dash.url.startswith("http://127.0.0.1:")
        status, page = _get(dash.url)
        assert status == 200 and b"connect-src 'self'" in page
        data = embedded(page.decode())
        assert data["live"] and data["heatmap"]["steps"] == [steps[0], steps[-1]]
        rev = data["revision"]
        assert _get(f"{dash.url}data.json?rev={rev}")[0] == 204  # nothing new
        line = json.dumps(analysis_event(steps[1], reports[steps[1]])) + "\n"
        with open(run / "monitor.jsonl", "a") as fh:
            fh.write(line[:100])  # half a line: nothing new yet, and no failure
            fh.flush()
            assert _get(f"{dash.url}data.json?rev={rev}")[0] == 204
            fh.write(line[100:])
        status, body = _get(f"{dash.url}data.json?rev={rev}")
        msg = json.loads(body)
        assert status == 200 and msg["revision"] > rev
        assert msg["data"]["heatmap"]["steps"] == steps
        assert _get(f"{dash.url}nothing")[0] == 404
    finally:
        dash.close()


def test_dashboard_port_in_use_is_a_one_line_error(tmp_path, capsys):
    (tmp_path / "metrics.jsonl").write_text("")  # a run folder, nothing written yet
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        assert main(["serve", str(tmp_path), "--port", str(port)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"layerpeel: error: port {port} on 127.0.0.1 is already in use; choose another with "
        "--port (--port 0 picks a free one)"
    )
    assert main(["serve", str(tmp_path / "nope")]) == 2
    assert main(["serve", str(tmp_path), "--port", "x"]) == 2


def test_reader_revision_grows_only_on_change(run_copy):
    run, _ = run_copy
    reader = RunReader(run)
    assert reader.refresh() and reader.revision == 1
    assert not reader.refresh() and reader.revision == 1
    append_jsonl(run / "metrics.jsonl", {"step": 13, "train_loss": 1.0})
    assert reader.refresh() and reader.revision == 2
