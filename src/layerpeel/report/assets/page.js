/* layerpeel report and dashboard: draws the page from the embedded JSON (or, live, from
   /data.json). It only shows what the JSON holds; it computes no bound. No network is used
   except, on the dashboard, polling the server that served the page. */
(function () {
  "use strict";
  var SVGNS = "http://www.w3.org/2000/svg";
  var state = { part: null, sortKey: null, sortDir: 1, revision: -1 };

  function h(tag, attrs) {
    var node = document.createElement(tag);
    setAttrs(node, attrs);
    for (var i = 2; i < arguments.length; i++) append(node, arguments[i]);
    return node;
  }
  function s(tag, attrs) {
    var node = document.createElementNS(SVGNS, tag);
    setAttrs(node, attrs);
    for (var i = 2; i < arguments.length; i++) append(node, arguments[i]);
    return node;
  }
  function setAttrs(node, attrs) {
    if (!attrs) return;
    Object.keys(attrs).forEach(function (k) {
      if (attrs[k] !== null && attrs[k] !== undefined) node.setAttribute(k, attrs[k]);
    });
  }
  function append(node, child) {
    if (child === null || child === undefined || child === false) return;
    if (Array.isArray(child)) { child.forEach(function (c) { append(node, c); }); return; }
    node.appendChild(typeof child === "object" ? child : document.createTextNode(String(child)));
  }
  function esc(text) {
    return String(text).replace(/[&<>"]/g, function (c) {
      return { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" }[c];
    });
  }
  function num(v, digits) {
    return v === null || v === undefined ? "\u2014" : Number(v).toFixed(digits);
  }
  function badge(legend, verdict) {
    var d = legend[verdict] || legend.unknown;
    return h("span", { "class": "badge", "data-verdict": verdict, style: "background:" + d.colour },
      d.symbol + " " + d.word);
  }
  function section(id, title) {
    var node = h("section", { id: id });
    append(node, h("h2", null, title));
    for (var i = 2; i < arguments.length; i++) append(node, arguments[i]);
    return node;
  }
  function note(text) { return h("p", { "class": "note" }, text); }
  function ticks(lo, hi, count) {
    var span = hi - lo, raw = span / Math.max(count, 1);
    var mag = Math.pow(10, Math.floor(Math.log10(raw)));
    var step = [1, 2, 2.5, 5, 10].map(function (m) { return m * mag; })
      .find(function (st) { return span / st <= count; }) || 10 * mag;
    var out = [];
    for (var t = Math.ceil(lo / step) * step; t <= hi + 1e-9 * span; t += step) out.push(+t.toPrecision(12));
    return out;
  }

  // ------------------------------------------------------------------ verdict banner
  function banner(data) {
    var hl = data.headline, v = hl.verdict;
    var d = data.legend.whole[v] || data.legend.whole.unknown;
    var word = v === "unknown" ? "NO VERDICT" : v.toUpperCase();
    return h("section", { id: "verdict", "class": "banner", "data-verdict": v, style: "background:" + d.colour },
      h("span", { "class": "symbol", "aria-hidden": "true" }, d.symbol),
      h("div", null, h("div", { "class": "word" }, word),
        hl.question ? h("p", { "class": "question" }, hl.question) : null,
        h("p", { "class": "sentence" }, hl.sentence)));
  }

  function notices(data) {
    var out = [];
    if (data.skipped.length) {
      out.push(h("details", { "class": "skipped", id: "skipped", open: "" },
        h("summary", null, "What this page skipped (" + data.skipped.length + ")"),
        h("ul", null, data.skipped.map(function (t) { return h("li", null, t); }))));
    }
    var ev = data.monitor;
    if (ev.errors.length || ev.disabled.length) {
      out.push(h("div", { "class": "events", id: "monitor-events" },
        h("strong", null, "Monitor events"),
        h("ul", null,
          ev.errors.map(function (e) {
            return h("li", null, "\u2716 error at step " + e.step + ": " + e.message +
              (e.traceback ? " (traceback: " + e.traceback + ")" : ""));
          }),
          ev.disabled.map(function (e) {
            return h("li", null, "\u25A0 monitor disabled at step " + e.step + ": " + e.reason);
          }))));
    }
    return out;
  }

  // ------------------------------------------------------------------ YES cloud
  function cloud(data) {
    var c = data.cloud;
    if (!c) {
      return section("cloud", "YES cloud",
        note(data.kind === "empty" ? "No analysis yet." + (data.progress.last_step === null ? "" :
          " Training has logged up to step " + data.progress.last_step + " (" + data.progress.metrics_lines + " lines in metrics.jsonl).") :
          "No YES-cloud data: the analyses hold no cascade (P3)."));
    }
    var W = 820, H = 340, L = 64, R = 16, T = 14, B = 44;
    var n = c.steps.length, k = c.yes[0].length;
    var last = c.yes.map(function (y, i) { return y.length ? y[y.length - 1] : c.yes0[i]; });
    var vals = [].concat(c.trained, c.yes0, last);
    c.yes.forEach(function (y) { vals = vals.concat(y); });
    var curve = c.train_curve;
    if (curve) vals = vals.concat(curve.loss);
    vals = vals.filter(function (v) { return v !== null; });
    var lo = Math.min.apply(null, vals), hi = Math.max.apply(null, vals);
    var pad = Math.max(0.08 * (hi - lo), 0.05);
    lo -= pad; hi += pad;
    var xs = c.steps.slice();
    if (curve) xs = xs.concat([curve.steps[0], curve.steps[curve.steps.length - 1]]);
    var x0 = Math.min.apply(null, xs), x1 = Math.max.apply(null, xs);
    if (x1 === x0) { x0 -= 1; x1 += 1; }
    function X(v) { return L + (v - x0) / (x1 - x0) * (W - L - R); }
    function Y(v) { return T + (hi - v) / (hi - lo) * (H - T - B); }
    var leg = data.legend.whole;
    // drawn in W x H units and scaled to the card's full width
    var svg = s("svg", { viewBox: "0 0 " + W + " " + H, role: "img", "class": "wide",
      "aria-label": "YES cloud: loss and bounds over " + c.x_label });
    function band(top, bottom, colour, name) {
      var pts = [];
      var xa = n === 1 ? [X(c.steps[0]) - 6, X(c.steps[0]) + 6] : null;
      for (var i = 0; i < n; i++) pts.push([xa ? xa[0] : X(c.steps[i]), Y(top(i))]);
      if (xa) pts.push([xa[1], Y(top(0))]);
      if (xa) pts.push([xa[1], Y(bottom(0))]);
      for (var j = n - 1; j >= 0; j--) pts.push([xa ? xa[0] : X(c.steps[j]), Y(bottom(j))]);
      return s("polygon", { points: pts.map(function (p) { return p[0].toFixed(1) + "," + p[1].toFixed(1); }).join(" "),
        fill: colour, "fill-opacity": 0.35, "class": "band", "data-band": name });
    }
    append(svg, band(function () { return hi; }, function (i) { return c.yes0[i]; }, leg.red.colour, "red"));
    append(svg, band(function (i) { return c.yes0[i]; }, function (i) { return last[i]; }, leg.yellow.colour, "yellow"));
    append(svg, band(function (i) { return last[i]; }, function () { return lo; }, leg.green.colour, "green"));
    ticks(lo, hi, 6).forEach(function (t) {
      append(svg, s("line", { x1: L, x2: W - R, y1: Y(t), y2: Y(t), stroke: "#000", "stroke-opacity": 0.08 }));
      append(svg, s("text", { x: L - 6, y: Y(t) + 4, "text-anchor": "end", "font-size": 11 }, t));
    });
    ticks(x0, x1, 8).forEach(function (t) {
      append(svg, s("text", { x: X(t), y: H - B + 16, "text-anchor": "middle", "font-size": 11 }, t));
    });
    append(svg, s("text", { x: (L + W - R) / 2, y: H - 6, "text-anchor": "middle", "font-size": 12 }, c.x_label));
    append(svg, s("text", { x: 14, y: (T + H - B) / 2, "text-anchor": "middle", "font-size": 12,
      transform: "rotate(-90 14 " + (T + H - B) / 2 + ")" }, c.y_label));
    function path(values, xsOf, attrs) {
      var d = "", pen = false;
      values.forEach(function (v, i) {
        if (v === null) { pen = false; return; }
        d += (pen ? "L" : "M") + X(xsOf[i]).toFixed(1) + "," + Y(v).toFixed(1);
        pen = true;
      });
      attrs.d = d; attrs.fill = "none";
      return s("path", attrs);
    }
    if (curve) append(svg, path(curve.loss, curve.steps, { stroke: "#777", "stroke-width": 1, "class": "train-curve" }));
    for (var q = 0; q < k - 1; q++) {
      append(svg, path(c.yes.map(function (y) { return y[q]; }), c.steps,
        { stroke: "#7a6a20", "stroke-width": 0.8, "stroke-dasharray": "4 3" }));
    }
    append(svg, path(c.yes0, c.steps, { stroke: "#8b1a1a", "stroke-width": 1.5, "class": "yes0" }));
    append(svg, path(last, c.steps, { stroke: "#145a14", "stroke-width": 1.5, "class": "yes-last" }));
    append(svg, path(c.trained, c.steps, { stroke: "#000", "stroke-width": 2, "class": "trained" }));
    var every = Math.max(1, Math.ceil(n / 120));
    c.steps.forEach(function (st, i) {
      if (i % every && i !== n - 1) return;
      var v = c.verdict[i], d = leg[v] || leg.unknown;
      var u = " " + c.unit;
      var tip = c.x_label + " " + st + ": " + d.word + " (" + v + "); trained " + num(c.trained[i], 4) +
        u + ", YES-0 " + num(c.yes0[i], 4) + u + ", YES-" + k + " " + num(last[i], 4) + u;
      append(svg, s("g", { "class": "cloud-point", "data-verdict": v, "data-step": st },
        s("title", null, tip),
        s("circle", { cx: X(st), cy: Y(c.trained[i]), r: 7, fill: d.colour, stroke: "#000", "stroke-width": 0.8 }),
        s("text", { x: X(st), y: Y(c.trained[i]) + 4, "text-anchor": "middle", "font-size": 10,
          fill: v === "yellow" ? "#000" : "#fff" }, d.symbol)));
    });
    var legend = h("ul", { "class": "legend" },
      ["red", "yellow", "green"].map(function (v) {
        var text = { red: "band above YES-0", yellow: "band between YES-" + k + " and YES-0 (the YES cloud)",
          green: "band at or below YES-" + k }[v];
        return h("li", null, h("span", { "class": "swatch", style: "background:" + leg[v].colour }, leg[v].symbol),
          v + ": " + text + " \u2014 " + leg[v].word);
      }),
      h("li", null, "\u2014 black: " + (data.kind === "mlp" ? "training loss" : "trained model on the held-out monitoring tokens")),
      h("li", null, "\u2014 dark red: YES-0; dark green: YES-" + k + (k > 1 ? "; dashed: YES-1..YES-" + (k - 1) : "")),
      curve ? h("li", null, "\u2014 grey: training-batch loss from metrics.jsonl (context; not what the bounds are compared with)" +
        (curve.stride > 1 ? ", one in every " + curve.stride + " logged steps" : "")) : null);
    var text = data.kind === "mlp" ?
      "Training loss of the MLP against its YES bounds, in dB (10 log10 of the MSE, as the YES paper plots them), as recorded at each check." :
      "Whole-model YES verdict at each analysed checkpoint (P3 cascade): the trained model's held-out cross-entropy against YES-0 and YES-" + k + ", in nats per token. Each checkpoint's own bounds, as recorded.";
    return section("cloud", "YES cloud", note(text), h("div", { "class": "scroll" }, svg), legend);
  }

  // ------------------------------------------------------------------ heatmap
  // The legend's symbols added to the current path of p (a 2D context) centred on (x, y), half-size r: \u2716 cross,
  // \u25B2 triangle, \u2714 tick, ? for no verdict, a dot for a cell not analysed.
  function glyph(p, v, x, y, r) {
    if (v === "red") { p.moveTo(x - r, y - r); p.lineTo(x + r, y + r); p.moveTo(x + r, y - r); p.lineTo(x - r, y + r); }
    else if (v === "yellow") { p.moveTo(x, y - r); p.lineTo(x + r, y + 0.8 * r); p.lineTo(x - r, y + 0.8 * r); p.closePath(); }
    else if (v === "green") { p.moveTo(x - r, y); p.lineTo(x - 0.3 * r, y + 0.7 * r); p.lineTo(x + r, y - 0.8 * r); }
    else if (v === "missing") { p.rect(x - 0.2 * r, y - 0.2 * r, 0.4 * r, 0.4 * r); }
    else {
      p.moveTo(x - 0.5 * r, y - 0.5 * r); p.quadraticCurveTo(x, y - 1.3 * r, x + 0.5 * r, y - 0.5 * r);
      p.quadraticCurveTo(x + 0.5 * r, y, x, y + 0.2 * r); p.lineTo(x, y + 0.4 * r);
      p.moveTo(x, y + 0.8 * r); p.lineTo(x, y + r);
    }
  }

  function heatmap(data) {
    var hm = data.heatmap;
    if (!hm) {
      return section("heatmap", "Layer gaps by checkpoint",
        note(data.kind === "mlp" ? "An MLP run: per-layer peeling applies to transformer runs." : "No layer rows yet."));
    }
    if (hm.parts.indexOf(state.part) < 0) state.part = hm.parts[0];
    var part = state.part, leg = data.legend.layer;
    var codes = { r: "red", y: "yellow", g: "green", "?": "unknown", ".": "missing" };
    var n = hm.steps.length, rows = hm.blocks;
    var cw = Math.max(14, Math.min(64, Math.floor(860 / n))), ch = rows > 24 ? 16 : 24;
    var L = 70, T = 30, W = L + n * cw + 8, H = T + rows * ch + 8;
    var showGap = cw >= 56;
    var labelEvery = Math.max(1, Math.ceil(44 / cw));
    // Drawn on a canvas: 500 checkpoints x 48 blocks are 24,000 cells, too many DOM nodes.
    var box = h("div", { "class": "scroll", id: "heatmap-box" });
    var canvas = h("canvas", { id: "heatmap-canvas", role: "img", "data-part": part,
      "aria-label": "gap verdict of each " + part + " (rows) at each checkpoint (columns); the table below lists the latest values" });
    var ratio = window.devicePixelRatio || 1;
    canvas.width = Math.ceil(W * ratio); canvas.height = Math.ceil(H * ratio);
    canvas.style.width = W + "px"; canvas.style.height = H + "px";
    box.appendChild(canvas);
    var g = canvas.getContext("2d");
    g.scale(ratio, ratio);
    g.fillStyle = "#fff"; g.fillRect(0, 0, W, H);
    g.fillStyle = "#1d1d1f"; g.font = "10px system-ui, sans-serif"; g.textAlign = "center";
    for (var col = 0; col < n; col += labelEvery) g.fillText(String(hm.steps[col]), L + col * cw + cw / 2, T - 8);
    g.textAlign = "right"; g.font = "11px system-ui, sans-serif";
    var r = Math.min(cw, ch) * 0.26;  // half the size of a drawn symbol
    // Each verdict's cell (colour and symbol) is drawn once on a small canvas, then copied into
    // every cell with that verdict: 24,000 copies take a few tens of ms, 24,000 paths far longer.
    var sprites = {};
    ["red", "yellow", "green", "unknown", "missing"].forEach(function (v) {
      var sp = document.createElement("canvas");
      sp.width = Math.ceil(cw * ratio); sp.height = Math.ceil(ch * ratio);
      var q = sp.getContext("2d");
      q.scale(ratio, ratio);
      q.fillStyle = leg[v] ? leg[v].colour : "#f0f0f0";
      q.fillRect(0, 0, cw - 1, ch - 1);
      if (!showGap) {
        var ink = v === "yellow" || v === "missing" ? "#000" : "#fff";
        q.lineCap = "round"; q.lineJoin = "round"; q.lineWidth = Math.max(1.2, r / 2.5);
        q.beginPath();
        glyph(q, v, cw / 2, ch / 2, r);
        q.strokeStyle = ink; q.stroke();
        if (v === "yellow" || v === "missing") { q.fillStyle = ink; q.fill(); }
      }
      sprites[v] = sp;
    });
    for (var b = 0; b < rows; b++) {
      var y = T + b * ch, line = hm.verdict[part][b], gaps = hm.gap[part][b];
      g.fillStyle = "#1d1d1f"; g.textAlign = "right";
      g.fillText("block " + b, L - 6, y + ch / 2 + 4);
      for (var c = 0; c < n; c++) {
        var v = codes[line.charAt(c)], x = L + c * cw;
        g.drawImage(sprites[v], x, y, cw, ch);
        if (showGap) {
          var d = leg[v] || { symbol: "\u00b7" };
          g.fillStyle = v === "yellow" || v === "missing" ? "#000" : "#fff"; g.textAlign = "center";
          g.fillText(gaps[c] !== null ? d.symbol + " " + Number(gaps[c]).toFixed(3) : d.symbol, x + cw / 2, y + ch / 2 + 4);
        }
      }
    }
    var tip = document.getElementById("tooltip");
    box.addEventListener("mousemove", function (ev) {
      var rect = canvas.getBoundingClientRect();
      var ci = Math.floor((ev.clientX - rect.left - L) / cw), bi = Math.floor((ev.clientY - rect.top - T) / ch);
      if (ci < 0 || ci >= n || bi < 0 || bi >= rows) { tip.style.display = "none"; return; }
      var v = codes[hm.verdict[part][bi].charAt(ci)];
      tip.textContent = "step " + hm.steps[ci] + ", block " + bi + (part === "block" ? "" : " " + part) + ": " +
        (v === "missing" ? "not analysed" : "gap " + num(hm.gap[part][bi][ci], 4) + " nats, " + (leg[v] || leg.unknown).word);
      tip.style.display = "block";
      tip.style.left = ev.clientX + 12 + "px";
      tip.style.top = ev.clientY + 12 + "px";
    });
    box.addEventListener("mouseleave", function () { tip.style.display = "none"; });
    var tabs = h("div", { "class": "tabs", role: "group", "aria-label": "part" },
      hm.parts.map(function (p) {
        var btn = h("button", { type: "button", "aria-pressed": p === part ? "true" : "false", "data-part": p },
          p === "block" ? "whole block" : p);
        btn.addEventListener("click", function () { state.part = p; replace(heatmap(current)); });
        return btn;
      }));
    // the legend names only the kinds of cell this part's grid draws
    var drawn = hm.verdict[part].join("");
    var legend = h("ul", { "class": "legend" },
      ["red", "yellow", "green", "unknown"].filter(function (v) { return drawn.indexOf({ red: "r", yellow: "y", green: "g", unknown: "?" }[v]) >= 0; }).map(function (v) {
        return h("li", null, h("span", { "class": "swatch", style: "background:" + leg[v].colour }, leg[v].symbol), leg[v].word);
      }),
      drawn.indexOf(".") >= 0 ? h("li", null, h("span", { "class": "swatch", style: "background:#f0f0f0" }, "\u00b7"), "not analysed at that step") : null);
    var node = section("heatmap", "Layer gaps by checkpoint",
      note("P1 gap of each block (rows) at each analysed checkpoint (columns), with its verdict. " +
        "Hover a cell for the gap in nats."), tabs, box, legend);
    // cell geometry for whoever reads pixels back (the browser tests): width, height, left, top
    node.setAttribute("data-cell", [cw, ch, L, T].join(" "));
    return node;
  }

  // ------------------------------------------------------------------ table
  var COLUMNS = [
    { key: "block", label: "block", digits: null },
    { key: "part", label: "part", text: true },
    { key: "gap", label: "gap (nats)", digits: 4 },
    { key: "ci_low", label: "95% interval", digits: 4, render: function (r) { return "[" + num(r.ci_low, 4) + ", " + num(r.ci_high, 4) + "]"; } },
    { key: "verdict", label: "verdict", text: true },
    { key: "work", label: "work (nats)", digits: 4, render: function (r) { return num(r.work, 4) + (r.work_ratio !== null && r.work_ratio !== undefined ? " (" + num(r.work_ratio, 2) + "\u00D7 median)" : "") + (r.idle ? " idle" : ""); } },
    { key: "influence", label: "influence (1 \u2212 cos)", digits: 3 },
    { key: "ce_reference", label: "reference CE", digits: 4 },
    { key: "ce_trained", label: "trained CE", digits: 4 },
    { key: "opt_part", label: "optimization part", digits: 4 },
    { key: "quant_part", label: "quantization part", digits: 4 },
    { key: "solver", label: "solver", text: true },
    { key: "time_s", label: "time (s)", digits: 2 },
    { key: "step", label: "step", digits: null }
  ];
  var SEVERITY = { unknown: 0, green: 1, yellow: 2, red: 3 };

  function sortValue(row, key) {
    if (key === "verdict") return SEVERITY[row.verdict];
    var v = row[key];
    return v === null || v === undefined ? null : v;
  }

  function layerTable(data) {
    if (!data.table.length) {
      return section("layers", "Blocks and sub-blocks", note(data.kind === "mlp" ?
        "An MLP run: per-layer peeling applies to transformer runs." : "No layer rows yet."));
    }
    var rows = data.table.slice();
    if (state.sortKey) {
      var key = state.sortKey, dir = state.sortDir;
      rows.sort(function (a, b) {
        var x = sortValue(a, key), y = sortValue(b, key);
        if (x === y) return 0;
        if (x === null) return 1;
        if (y === null) return -1;
        return (x < y ? -1 : 1) * dir;
      });
    }
    var head = h("tr", null, COLUMNS.map(function (col) {
      var sort = state.sortKey === col.key ? (state.sortDir > 0 ? "ascending" : "descending") : "none";
      var th = h("th", { "class": "sortable" + (col.text ? " text" : ""), "data-key": col.key, "aria-sort": sort,
        scope: "col", tabindex: "0" }, col.label);
      function go() {
        state.sortDir = state.sortKey === col.key ? -state.sortDir : 1;
        state.sortKey = col.key;
        replace(layerTable(current));
      }
      th.addEventListener("click", go);
      th.addEventListener("keydown", function (ev) { if (ev.key === "Enter" || ev.key === " ") { ev.preventDefault(); go(); } });
      return th;
    }));
    var body = h("tbody", null, rows.map(function (r) {
      return h("tr", { "data-verdict": r.verdict, "data-block": r.block, "data-part": r.part },
        COLUMNS.map(function (col) {
          var cell;
          if (col.key === "verdict") {
            cell = badge(data.legend.layer, r.verdict);
            if (r.explained_by !== null && r.explained_by !== undefined) {  // attribution
              cell = [cell, " explained by block " + r.explained_by + " (gap " +
                num(r.gap_given_first, 4) + " with its reference in place)"];
            }
          }
          else if (col.render) cell = col.render(r);
          else if (col.text) cell = r[col.key] === null || r[col.key] === undefined ? "\u2014" : r[col.key];
          else cell = col.digits === null ? r[col.key] : num(r[col.key], col.digits);
          return h("td", { "class": col.text ? "text" : null, "data-key": col.key }, cell);
        }));
    }));
    return section("layers", "Blocks and sub-blocks",
      note("One row per block and sub-block, from the most recent analysis that has it. gap = trained CE \u2212 reference CE on the held-out part: " +
        "how much re-optimizing only that part (everything else frozen) lowers the loss. work = CE without the block \u2212 CE with it; " +
        "a block whose work is far below the other blocks' is idle, and red. For quantized models the gap splits into an optimization " +
        "part (quantized reference vs trained) and a quantization part (full-precision reference vs quantized reference). Click a column to sort."),
      h("div", { "class": "scroll" }, h("table", { "class": "data", id: "layer-table" }, h("thead", null, head), body)));
  }

  // ------------------------------------------------------------------ ladder
  function ladder(data) {
    var lad = data.ladder;
    if (!lad) {
      return section("ladder", "Projection ladder", note(data.kind === "mlp" ?
        "An MLP run: the projection ladder applies to transformer runs." : "No ladder (P2) in the analyses."));
    }
    var tr = lad.ce_trained, maxd = 0;
    lad.ce.forEach(function (row) { row.forEach(function (v) { if (v !== null && tr !== null) maxd = Math.max(maxd, Math.abs(v - tr)); }); });
    var head = h("tr", null, h("th", { "class": "text" }, "from \\ to"),
      lad.ce.map(function (_, j) { return h("th", null, "block " + j); }));
    var body = lad.ce.map(function (row, i) {
      return h("tr", null, h("th", { "class": "text", scope: "row" }, "block " + i), row.map(function (v, j) {
        if (v === null) return h("td", { "class": "na" }, j < i ? "" : "\u2014");
        var delta = tr === null ? null : v - tr;
        var below = delta !== null && delta <= 0;
        var a = maxd > 0 && delta !== null ? Math.min(1, Math.abs(delta) / maxd) : 0;
        var bg = below ? "rgba(26,152,80," + (0.15 + 0.6 * a).toFixed(2) + ")" : "rgba(120,120,120," + (0.05 + 0.35 * a).toFixed(2) + ")";
        return h("td", { "data-from": i, "data-to": j, style: "background:" + bg,
          title: "block " + i + " peeled onto the output of block " + j + ": CE " + num(v, 4) + " nats" },
          (below ? "\u25BC " : "") + num(v, 3), h("br"), h("small", null, "\u0394 " + (delta === null ? "\u2014" : (delta > 0 ? "+" : "") + delta.toFixed(3))));
      }));
    });
    return section("ladder", "Projection ladder",
      note("CE(l \u2192 j) at step " + lad.step + ": block l alone, peeled to map its input onto the output of block j, then blocks after j and the head. " +
        "The diagonal checks that the reference reaches the trained block; off the diagonal, a value near the trained CE (" + num(tr, 4) +
        " nats) means block l alone can do the work of blocks l..j. \u0394 = CE(l \u2192 j) \u2212 trained CE; \u25BC and green shading: at or below the trained CE, grey: above it (darker = larger |\u0394|)."),
      h("div", { "class": "scroll" }, h("table", { "class": "data ladder", id: "ladder-table" }, h("thead", null, head), h("tbody", null, body))));
  }

  // ------------------------------------------------------------------ settings and provenance
  function flatten(obj, prefix, out) {
    Object.keys(obj || {}).forEach(function (k) {
      var v = obj[k], name = prefix ? prefix + "." + k : k;
      if (v && typeof v === "object" && !Array.isArray(v)) flatten(v, name, out);
      else out.push([name, Array.isArray(v) ? JSON.stringify(v) : String(v)]);
    });
    return out;
  }
  function kv(title, obj) {
    var rows = flatten(obj, "", []);
    if (!rows.length) return null;
    return h("div", null, h("h3", null, title), h("table", { "class": "kv" },
      rows.map(function (r) { return h("tr", null, h("td", null, r[0]), h("td", { "class": "mono" }, r[1])); })));
  }
  function settings(data) {
    var st = data.settings;
    var hashes = st.monitoring_hashes.length ? st.monitoring_hashes : ["\u2014"];
    return section("settings", "Settings and versions",
      h("table", { "class": "kv" },
        h("tr", null, h("td", null, "monitoring-set sha256"), h("td", { "class": "mono", id: "monitoring-hash" }, hashes.join(", "))),
        h("tr", null, h("td", null, "layerpeel (this page)"), h("td", { "class": "mono", id: "page-version" }, data.layerpeel)),
        h("tr", null, h("td", null, "layerpeel (analysis)"), h("td", { "class": "mono" }, st.analysis_layerpeel || "\u2014")),
        h("tr", null, h("td", null, "latest analysis"), h("td", { "class": "mono" },
          st.analysis_step === null ? "\u2014" : "step " + st.analysis_step + " (" + st.analysis_source + ")")),
        hashes.length > 1 ? h("tr", null, h("td", null, "note"), h("td", null, "\u2716 the analyses used different monitoring sets; their losses are not comparable")) : null),
      h("details", { id: "settings-all" }, h("summary", null, "every setting: analysis, monitoring set, model, time per phase, run config.json"),
        h("div", { "class": "grid2" },
          kv("analysis settings (PeelConfig)", st.peel_config),
          kv("monitoring set", st.monitoring),
          kv("model analysed", st.model),
          kv("time per phase (s)", st.timings),
          kv("run config.json", st.run_config))));
  }
  function provenance(data) {
    return section("provenance", "What is the papers' and what is layerpeel's design",
      h("ul", { "class": "prov" }, data.provenance.map(function (p) {
        return h("li", { "data-kind": p.kind }, h("span", { "class": "tag " + p.kind }, p.kind === "paper" ? "PAPER" : "DESIGN"),
          p.what + " \u2014 ", h("em", null, p.source));
      })),
      note("Every reference loss on this page is the loss of a real network of the same architecture (and quantizer), so it is achievable."));
  }

  // ------------------------------------------------------------------ page
  var current = null;
  function replace(node) {
    var old = document.getElementById(node.id);
    var box = old && old.querySelector(".scroll");
    var scroll = box ? box.scrollLeft : 0;
    old.replaceWith(node);
    box = node.querySelector(".scroll");
    if (box) box.scrollLeft = scroll;
  }
  function redraw() {
    var box = document.getElementById("heatmap-box");
    var scroll = box ? box.scrollLeft : 0;
    var app = document.getElementById("app");
    var data = current;
    app.replaceChildren(banner(data));
    append(app, notices(data));
    append(app, [cloud(data), heatmap(data), layerTable(data), ladder(data), settings(data), provenance(data)]);
    box = document.getElementById("heatmap-box");
    if (box) box.scrollLeft = scroll;
  }
  function render(data) {
    current = data;
    document.title = "layerpeel \u2014 " + data.name;
    document.getElementById("run-path").textContent = data.run;
    redraw();
    document.body.setAttribute("data-rendered", String(++state.revision));
  }

  function poll() {
    var status = document.getElementById("live-status");
    fetch("data.json?rev=" + (window.layerpeelRevision || 0), { cache: "no-store" }).then(function (resp) {
      if (resp.status === 204) return null;
      if (!resp.ok) throw new Error("HTTP " + resp.status);
      return resp.json();
    }).then(function (msg) {
      status.className = "";
      status.textContent = "live \u2014 checked " + new Date().toLocaleTimeString();
      if (msg) { window.layerpeelRevision = msg.revision; render(msg.data); }
    }).catch(function (err) {
      status.className = "lost";
      status.textContent = "\u2716 lost the server (" + err.message + "); retrying";
    }).then(function () { setTimeout(poll, window.layerpeelPollMs || 1000); });
  }

  var data = JSON.parse(document.getElementById("layerpeel-data").textContent);
  render(data);
  if (performance.mark) performance.mark("layerpeel-rendered");
  if (data.live) {
    window.layerpeelRevision = data.revision || 0;
    poll();
  }
})();
