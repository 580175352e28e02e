"""The report and the dashboard in real headless Chromium (Debian's `chromium`, driven by Playwright).

Skipped, with the reason shown, where Chromium or the `playwright` package is missing; `make test`
installs Chromium where it can. Screenshots are written to each test's tmp_path.
"""

import json
import shutil

import pytest

from layerpeel.report.chromium import CHROMIUM_ARGS, find_chromium
from layerpeel.report.html import write_report
from layerpeel.report.payload import LAYER, WHOLE_MODEL
from layerpeel.report.server import Dashboard
from report_runs import TINY, analysed_run, analysis_event

SEVERITY = {"green": 1, "yellow": 2, "red": 3}
# [block, column, "rgb(...)"] of the pixel just inside the top-left corner of every heatmap cell
CELL_COLOURS = """([n, rows]) => {
  const canvas = document.getElementById("heatmap-canvas");
  const [cw, ch, left, top] = document.getElementById("heatmap").dataset.cell.split(" ").map(Number);
  const ratio = canvas.width / canvas.clientWidth, g = canvas.getContext("2d"), out = [];
  for (let b = 0; b < rows; b++) for (let c = 0; c < n; c++) {
    const p = g.getImageData(Math.round((left + c * cw + 2) * ratio), Math.round((top + b * ch + 2) * ratio), 1, 1).data;
    out.push([b, c, `rgb(${p[0]}, ${p[1]}, ${p[2]})`]);
  }
  return out;
}"""


@pytest.fixture(scope="module")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("browser tests need the `playwright` package (pip install -e '.[dev]')")
    exe = find_chromium()
    if exe is None:
        pytest.skip(
            "browser tests need Chromium: `apt-get install chromium` (make test tries it) or set "
            "LAYERPEEL_CHROMIUM to a Chromium binary"
        )
    with sync_playwright() as pw:
        # launch() gives the browser a fresh temporary profile (--user-data-dir) every time
        b = pw.chromium.launch(executable_path=exe, headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()


class Page:
    """A page that records console errors, page errors and every request it makes."""

    def __init__(self, browser):
        self.page = browser.new_page(viewport={"width": 1280, "height": 900})
        self.errors, self.requests = [], []
        self.page.on("console", lambda m: m.type == "error" and self.errors.append(m.text))
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("request", lambda r: self.requests.append(r.url))

    def open(self, url):
        self.page.goto(url)
        self.page.wait_for_selector("body[data-rendered]")
        return self.page


@pytest.fixture(scope="module")
def real_run(tmp_path_factory):
    return analysed_run(tmp_path_factory.mktemp("browser-real"))


def rgb(hex_colour):
    h = hex_colour.lstrip("#")
    return "rgb({}, {}, {})".format(*(int(h[i : i + 2], 16) for i in (0, 2, 4)))


def test_report_offline_colours_words_and_sorting(browser, real_run, tmp_path):
    run, reports = real_run
    path, _ = write_report(run, tmp_path / "report.html")
    view = Page(browser)
    page = view.open(path.as_uri())
    page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
    assert view.errors == []
    assert view.requests == [path.as_uri()]  # nothing but the file itself

    steps = sorted(reports)
    last = reports[steps[-1]]
    # the banner: the worst of the whole-model and the latest layer verdicts, colour and word
    worst = max(
        [last["cascade"]["verdict"]] + [r["verdict"] for r in last["layers"]],
        key=SEVERITY.__getitem__,
    )
    banner = page.locator("#verdict")
    assert banner.get_attribute("data-verdict") == worst
    assert banner.locator(".word").inner_text() == worst.upper()
    assert banner.locator(".symbol").inner_text() == WHOLE_MODEL[worst]["symbol"]
    assert banner.evaluate("e => getComputedStyle(e).backgroundColor") == rgb(
        WHOLE_MODEL[worst]["colour"]
    )
    # sections in the order the report is specified to show them
    ids = page.eval_on_selector_all("main > section", "els => els.map(e => e.id)")
    assert ids == ["verdict", "cloud", "heatmap", "layers", "ladder", "settings", "provenance"]
    # the YES cloud: one point per analysed checkpoint, with the recorded verdict
    points = page.eval_on_selector_all(
        ".cloud-point", "els => els.map(e => [+e.dataset.step, e.dataset.verdict, e.textContent])"
    )
    assert [p[:2] for p in points] == [[s, reports[s]["cascade"]["verdict"]] for s in steps]
    assert all(WHOLE_MODEL[p[1]]["symbol"] in p[2] for p in points)
    # the table: every row's verdict, word, symbol and colour as in the latest JSON
    rows = page.locator("#layer-table tbody tr")
    assert rows.count() == len(last["layers"])
    for i, want in enumerate(last["layers"]):
        row = rows.nth(i)
        assert row.get_attribute("data-verdict") == want["verdict"]
        assert (row.get_attribute("data-block"), row.get_attribute("data-part")) == (
            str(want["block"]),
            want["part"],
        )
        badge = row.locator(".badge")
        legend = LAYER[want["verdict"]]
        assert badge.inner_text() == f"{legend['symbol']} {legend['word']}"
        assert badge.evaluate("e => getComputedStyle(e).backgroundColor") == rgb(legend["colour"])
        assert float(row.locator("td[data-key=gap]").inner_text()) == pytest.approx(
            want["gap"], abs=5e-5
        )
    # the heatmap (a canvas): the colour of every cell, read back from its pixels, is the colour
    # of the verdict in the JSON, checkpoint by checkpoint, for whole blocks and for MLPs
    for part in ("block", "mlp"):
        page.click(f"#heatmap button[data-part={part}]")
        assert page.get_attribute("#heatmap-canvas", "data-part") == part
        want = {
            (r["block"], col): rgb(LAYER[r["verdict"]]["colour"])
            for col, s in enumerate(steps)
            for r in reports[s]["layers"]
            if r["part"] == part
        }
        got = page.evaluate(CELL_COLOURS, [len(steps), TINY.n_layer])
        assert {(b, c): colour for b, c, colour in got} == want

    # sorting by clicking a header: ascending, then descending; verdicts by severity
    def column(key):
        return page.eval_on_selector_all(
            f"#layer-table tbody td[data-key={key}]", "els => els.map(e => e.textContent)"
        )

    page.click("#layer-table th[data-key=gap]")
    gaps = [float(v) for v in column("gap")]
    assert (
        gaps == sorted(gaps) and page.get_attribute("th[data-key=gap]", "aria-sort") == "ascending"
    )
    page.click("#layer-table th[data-key=gap]")
    gaps = [float(v) for v in column("gap")]
    assert gaps == sorted(gaps, reverse=True)
    page.click("#layer-table th[data-key=verdict]")
    verdicts = page.eval_on_selector_all(
        "#layer-table tbody tr", "els => els.map(e => e.dataset.verdict)"
    )
    assert [SEVERITY[v] for v in verdicts] == sorted(SEVERITY[v] for v in verdicts)
    page.click("#layer-table th[data-key=part]")
    assert column("part") == sorted(column("part"))
    page.screenshot(path=str(tmp_path / "report-sorted.png"), full_page=True)
    assert view.errors == [] and view.requests == [path.as_uri()]


def test_report_of_bad_input_renders_and_names_what_it_skipped(browser, real_run, tmp_path):
    run, reports = real_run
    bad = tmp_path / "bad"
    shutil.copytree(run, bad, ignore=shutil.ignore_patterns("checkpoints"))
    old = json.loads((bad / "analysis" / "step-000004.json").read_text())
    old["format_version"] = 0
    (bad / "analysis" / "step-000004.json").write_text(json.dumps(old))
    with open(bad / "monitor.jsonl", "a") as fh:
        fh.write('{"event": "analysis", "step": 16, "rep')
    path, res = write_report(bad)
    view = Page(browser)
    page = view.open(path.as_uri())
    page.screenshot(path=str(tmp_path / "report-bad-input.png"), full_page=True)
    assert view.errors == [] and view.requests == [path.as_uri()]
    items = page.eval_on_selector_all("#skipped li", "els => els.map(e => e.textContent)")
    assert items == res.notes and any("mid-write" in t for t in items)
    assert any("older peel-report format (0)" in t for t in items)
    assert page.locator("#layer-table tbody tr").count() == len(reports[12]["layers"])

    empty = tmp_path / "empty"
    empty.mkdir()
    path, _ = write_report(empty)
    page = view.open(path.as_uri())
    assert page.get_attribute("#verdict", "data-verdict") == "unknown"
    assert page.locator("#verdict .sentence").inner_text().startswith("No analysis yet")
    assert view.errors == []


def test_dashboard_picks_up_an_appended_line(browser, real_run, tmp_path):
    run, reports = real_run
    live = tmp_path / "live"
    shutil.copytree(
        run, live, ignore=shutil.ignore_patterns("checkpoints", "analysis", "monitor.jsonl")
    )
    dash = Dashboard(live, port=0).start()
    try:
        view = Page(browser)
        page = view.open(dash.url)
        page.evaluate("window.layerpeelPollMs = 200")
        assert page.get_attribute("#verdict", "data-verdict") == "unknown"
        assert "No analysis yet" in page.locator("#verdict").inner_text()
        page.wait_for_selector("#live-status:has-text('live')")
        page.screenshot(path=str(tmp_path / "dashboard-waiting.png"), full_page=True)
        step = sorted(reports)[-1]
        line = json.dumps(analysis_event(step, reports[step])) + "\n"
        with open(live / "monitor.jsonl", "a") as fh:
            fh.write(line[:200])  # half a line first, as a run being written leaves it
            fh.flush()
            page.wait_for_timeout(600)
            assert page.get_attribute("#verdict", "data-verdict") == "unknown"
            fh.write(line[200:])
        page.wait_for_selector("#layer-table", timeout=10_000)
        want = max(
            [reports[step]["cascade"]["verdict"]] + [r["verdict"] for r in reports[step]["layers"]],
            key=SEVERITY.__getitem__,
        )
        assert page.get_attribute("#verdict", "data-verdict") == want
        assert page.locator("#layer-table tbody tr").count() == len(reports[step]["layers"])
        page.screenshot(path=str(tmp_path / "dashboard-updated.png"), full_page=True)
        assert view.errors == []
        assert all(u.startswith(dash.url) for u in view.requests)
    finally:
        dash.close()
