// keishiki view: renders /api/info (one model) or /api/info + /api/compare (two models).
// Every string from a model file goes into the page through text nodes or setAttribute,
// never as HTML, so a tensor called "<img src=x onerror=...>" is shown, not run.
"use strict";

// ---- small builders ---------------------------------------------------------------------------

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v; else node.setAttribute(k, v);
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function text(value) {
  if (value === null || value === undefined) return "–";
  if (typeof value === "object") return JSON.stringify(value);
  return String(value);
}

function bytes(n) {
  if (n === null || n === undefined) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0, v = Number(n);
  while (Math.abs(v) >= 1024 && i < units.length - 1) { v /= 1024; i++; }
  return i === 0 ? `${v} B` : `${v.toFixed(1)} ${units[i]}`;
}

// [short, exact]: "493.89K" and "493,888" (shown on two lines: a figure never wraps)
function count(n) {
  if (n === null || n === undefined) return ["–", null];
  const v = Number(n);
  for (const [s, suf] of [[1e12, "T"], [1e9, "B"], [1e6, "M"], [1e3, "K"]]) {
    if (v >= s) return [`${(v / s).toFixed(2)}${suf}`, v.toLocaleString("en-US")];
  }
  return [v.toLocaleString("en-US"), null];
}

// a measured number: 4 significant digits, exponent for the very small or large
function num(x) {
  if (x === null || x === undefined) return "–";
  if (typeof x === "string") return x;  // "nan", "inf" (JSON has no NaN)
  if (x === 0) return "0";
  const a = Math.abs(x);
  if (Number.isInteger(x) && a < 1e9) return x.toLocaleString("en-US");
  return a < 1e-3 || a >= 1e6 ? x.toExponential(3) : String(Number(x.toPrecision(4)));
}

function shape(s) { return `[${(s || []).join(", ")}]`; }

function section(title, ...content) {
  return el("section", {}, el("h2", {}, title), ...content);
}

function stat(label, value, sub, wrap) {
  return el("div", {class: "stat"}, el("div", {class: "label"}, label),
            el("div", {class: wrap ? "value wrap" : "value", title: String(value)}, value),
            sub ? el("div", {class: "sub"}, sub) : null);
}

function table(id, headers, rows) {
  const head = el("tr", {}, ...headers.map(h => el("th", h.startsWith("#") ? {class: "num"} : {},
                                                h.replace(/^#/, ""))));
  return el("table", id ? {id} : {}, el("thead", {}, head), el("tbody", {}, ...rows));
}

function badge(label, cls, id) {
  return el("span", Object.assign({class: `badge ${cls || ""}`}, id ? {id} : {}), label);
}

// ---- values of any shape: nested tables instead of raw JSON -----------------------------------

const MAX_ITEMS = 30;

function isScalar(v) { return v === null || typeof v !== "object"; }

function value(v, depth) {
  if (v === null || v === undefined) return "–";
  if (typeof v === "string" && v.includes("\n")) {
    return el("details", {}, el("summary", {}, `${v.split("\n").length} lines`), el("pre", {}, v));
  }
  if (isScalar(v)) return String(v);
  if (depth > 3) return el("pre", {}, JSON.stringify(v, null, 1).slice(0, 4000));
  if (Array.isArray(v)) return listValue(v, depth);
  // a GGUF array key/value is summarised by the reader as {type, length, first}
  if ("length" in v && "first" in v && Array.isArray(v.first) && Object.keys(v).length <= 3) {
    return `${v.type ?? ""}[${v.length}]: ${v.first.map(String).join(", ")}` +
           (v.length > v.first.length ? ", …" : "");
  }
  return kvTable(v, null, depth + 1);
}

function listValue(v, depth) {
  if (!v.length) return el("span", {class: "muted"}, "none");
  const more = v.length > MAX_ITEMS ? ` … (${v.length - MAX_ITEMS} more)` : "";
  if (v.every(isScalar)) return v.slice(0, MAX_ITEMS).map(String).join(", ") + more;
  if (v.every(x => x && typeof x === "object" && !Array.isArray(x))) {
    const keys = [...new Set(v.flatMap(Object.keys))];
    const rows = v.slice(0, MAX_ITEMS).map(item => el("tr", {},
      ...keys.map(k => el("td", {class: "mono"}, value(item[k], depth + 1)))));
    return el("div", {}, table(null, keys, rows), more ? el("span", {class: "muted"}, more) : null);
  }
  return el("pre", {}, JSON.stringify(v.slice(0, MAX_ITEMS), null, 1).slice(0, 4000) + more);
}

function kvTable(obj, id, depth) {
  const body = el("tbody");
  for (const [k, v] of Object.entries(obj || {})) {
    const nested = v && typeof v === "object" && !Array.isArray(v);
    body.append(el("tr", {}, el("td", {class: "key mono"}, k),
                   el("td", {class: nested ? "mono nested" : "mono"}, value(v, depth || 0))));
  }
  const t = el("table", id ? {id} : {}, body);
  return depth ? t : el("div", {class: "scroll"}, t);
}

// ---- one model --------------------------------------------------------------------------------

function safetyBadge(safety) {
  if (!safety) return null;
  const verdict = String(safety.verdict ?? safety.status ?? (safety.safe === true ? "safe" :
                         safety.safe === false ? "unsafe" : "scanned"));
  const cls = /unsafe|danger|malicious|bad/i.test(verdict) ? "bad"
            : /warn|suspicious|unknown|caution|error/i.test(verdict) ? "warn" : "ok";
  return badge(`scan: ${verdict}`, cls, "safety-badge");
}

function safetySection(safety, p) {
  const {findings, ...facts} = safety;
  const parts = [kvTable(facts, `${p}safety`)];
  if (Array.isArray(findings) && findings.length) {
    const rows = findings.map(f => {
      const where = [f.file, f.member].filter(Boolean).join("!") +
                    (f.offset !== null && f.offset !== undefined ? `@${f.offset}` : "");
      const sev = String(f.severity ?? "");
      const cls = sev === "dangerous" ? "bad" : sev === "safe" ? "ok" : "warn";
      return el("tr", {}, el("td", {}, badge(sev, cls)), el("td", {class: "mono"}, text(f.global ?? f.opcode)),
                el("td", {class: "mono"}, where), el("td", {}, text(f.reason)));
    });
    parts.push(el("h3", {}, `Findings (${findings.length})`),
               el("div", {class: "scroll"}, table(`${p}findings`, ["severity", "global", "where", "reason"], rows)));
  }
  return section("Scan verdict", ...parts);
}

function summaryCards(info, id) {
  const params = count(info.n_parameters), tensors = count(info.n_tensors);
  return el("div", {class: "grid", id},
    stat("format", info.format + (info.variant ? ` (${info.variant})` : "")),
    stat("format version", text(info.format_version)),
    stat("file size", bytes(info.file_size)),
    stat("tensors", tensors[0], tensors[1]),
    stat("parameters", params[0], params[1]),
    stat("tensor bytes", bytes(info.total_bytes)),
    stat("dtypes", Object.entries(info.dtypes || {}).map(([d, n]) => `${d}: ${n}`).join(", ") || "–",
         null, true));
}

function histogram(title, counts, id) {
  const entries = Object.entries(counts || {}).sort((a, b) => b[1] - a[1]);
  const max = Math.max(1, ...entries.map(e => e[1]));
  const rows = entries.map(([name, n]) => {
    const bar = el("div", {class: "bar"}); bar.style.width = `${(100 * n / max).toFixed(1)}%`;
    const cell = el("td", {}, bar); cell.style.width = "50%";
    return el("tr", {}, el("td", {class: "mono"}, name), el("td", {class: "num"}, n), cell);
  });
  return el("div", {}, el("h3", {}, title), el("table", {id}, el("tbody", {}, ...rows)));
}

function ioTable(title, items) {
  const rows = (items || []).map(item => el("tr", {}, el("td", {class: "mono"},
    typeof item === "string" ? item : `${item.name}: ${item.type ?? text(item.shape)}`)));
  return el("div", {}, el("h3", {}, title), el("table", {}, el("tbody", {}, ...rows)));
}

function graphSection(graph, p) {
  const rest = Object.fromEntries(Object.entries(graph).filter(([k]) =>
    !["op_types", "inputs", "outputs", "inputs_detail", "outputs_detail"].includes(k)));
  return section("Graph",
    ioTable("Inputs", graph.inputs_detail || graph.inputs),
    ioTable("Outputs", graph.outputs_detail || graph.outputs),
    histogram("Operators", graph.op_types, `${p}op-types`),
    el("h3", {}, "Facts"), kvTable(rest, `${p}graph-facts`));
}

function ggufSection(gguf, p) {
  // kv_types becomes a column of the key/value table rather than a second list of keys
  const {kv, kv_types, ...facts} = gguf;
  const rows = Object.entries(kv || {}).map(([k, v]) => el("tr", {},
    el("td", {class: "key mono"}, k), el("td", {class: "muted"}, text((kv_types || {})[k])),
    el("td", {class: "mono"}, value(v, 1))));
  return section("GGUF", kvTable(facts, `${p}gguf-facts`), el("h3", {}, "Key/value metadata"),
                 el("div", {class: "scroll"}, table(`${p}gguf-kv`, ["key", "type", "value"], rows)));
}

const COMMON = new Set(["path", "format", "variant", "format_version", "file_size", "n_tensors",
  "n_parameters", "total_bytes", "dtypes", "metadata", "config", "graph", "gguf", "safety",
  "warnings", "tensors", "view"]);

const TITLES = {pytorch: "PyTorch", torchscript: "TorchScript", onnx: "ONNX", gguf: "GGUF",
                tflite: "TFLite", coreml: "Core ML", "keras-h5": "Keras HDF5", keras: "Keras",
                numpy: "NumPy", "torch-export": "torch.export", torch7: "Torch7"};

// the format-specific sections: graph, GGUF, config, metadata, format details (ids prefixed p)
function modelSections(info, p) {
  const out = [];
  if (info.warnings && info.warnings.length) {
    out.push(section("Warnings", el("ul", {}, ...info.warnings.map(w => el("li", {}, w)))));
  }
  if (info.safety) out.push(safetySection(info.safety, p));
  if (info.graph) out.push(graphSection(info.graph, p));
  if (info.gguf) out.push(ggufSection(info.gguf, p));
  if (info.config) out.push(section("Config", kvTable(info.config, `${p}config`)));
  // GGUF's general.* keys are both metadata and key/values: list them once, in the kv table
  const elsewhere = new Set(Object.keys((info.gguf && info.gguf.kv) || {}));
  const metadata = Object.fromEntries(Object.entries(info.metadata || {})
    .filter(([k]) => !elsewhere.has(k)));
  if (Object.keys(metadata).length) out.push(section("Metadata", kvTable(metadata, `${p}metadata`)));
  const extra = Object.entries(info).filter(([k]) => !COMMON.has(k));
  for (const [key, facts] of extra) {
    const title = `${TITLES[key] || key} details`;
    const body = facts && typeof facts === "object" && !Array.isArray(facts)
      ? kvTable(facts, `${p}details-${key}`) : el("p", {class: "mono"}, text(facts));
    out.push(section(title, body));
  }
  return out;
}

function tensorLink(name, onclick) {
  if (!onclick) return name;
  const a = el("a", {class: "tensor-link", href: "#stats", title: "statistics"}, name);
  a.addEventListener("click", ev => { if (ev && ev.preventDefault) ev.preventDefault(); onclick(); });
  return a;
}

// a search box that hides the rows whose data-search text does not match (substring or regex)
function filterBox(id, rows, placeholder) {
  const input = el("input", {type: "search", placeholder, id});
  const shown = el("span", {class: "muted"});
  const apply = () => {
    const typed = input.value.trim();
    const query = typed.toLowerCase();
    // the pattern as typed, matched without case ("i"): lower-casing it first would turn
    // \D, \S, \W, \B into \d, \s, \w, \b
    let re = null;
    try { re = typed ? new RegExp(typed, "i") : null; } catch (e) { re = null; }
    let n = 0;
    for (const row of rows) {
      const hit = !query || (re ? re.test(row.dataset.search) : row.dataset.search.includes(query));
      row.style.display = hit ? "" : "none";
      if (hit) n++;
    }
    shown.textContent = ` ${n} of ${rows.length} shown`;
  };
  input.addEventListener("input", apply);
  apply();
  return el("div", {}, input, shown);
}

function tensorSection(info, stats) {
  const tensors = info.tensors || [];
  const rows = tensors.map(t => {
    const row = el("tr", {}, el("td", {class: "mono"}, tensorLink(t.name,
                     stats.enabled ? () => stats.show([["a", t.name]]) : null)),
                   el("td", {class: "nowrap"}, t.dtype), el("td", {class: "mono nowrap"}, shape(t.shape)),
                   el("td", {class: "num"}, bytes(t.nbytes)),
                   el("td", {class: "num"}, t.data_offset ?? ""));
    row.dataset.search = `${t.name} ${t.dtype} ${shape(t.shape)}`.toLowerCase();
    return row;
  });
  const hint = stats.enabled ? el("p", {class: "muted"}, "Click a name for its statistics.") : null;
  return section(`Tensors (${tensors.length})`, hint,
                 filterBox("tensor-filter", rows, "filter by name, dtype or shape (regex)"),
                 el("div", {class: "scroll"}, table("tensors",
                   ["name", "dtype", "shape", "#bytes", "#offset"], rows)));
}

// ---- tensor statistics, one tensor at a time --------------------------------------------------

function statsHistogram(h) {
  const max = Math.max(1, ...h.counts);
  const bars = h.counts.map((n, i) => {
    const bar = el("div", {title: `[${num(h.edges[i])}, ${num(h.edges[i + 1])}): ${n}`});
    bar.style.height = `${(100 * n / max).toFixed(1)}%`;
    return bar;
  });
  return el("div", {}, el("div", {class: "hist", id: "stats-hist"}, ...bars),
            el("div", {class: "hist-axis"}, el("span", {}, num(h.edges[0])),
               el("span", {}, num(h.edges[h.edges.length - 1]))));
}

function statsCard(label, s) {
  if (s.error) return el("div", {}, el("h3", {}, label), el("p", {class: "err"}, s.error));
  const cards = el("div", {class: "grid compact"},
    stat("min", num(s.min)), stat("max", num(s.max)), stat("mean", num(s.mean)),
    stat("std", num(s.std)), stat("NaN", num(s.n_nan)), stat("+inf", num(s.n_posinf)),
    stat("−inf", num(s.n_neginf)), stat("zeros", num(s.n_zero)),
    stat("elements", count(s.numel)[0], count(s.numel)[1]));
  const note = s.sampled
    ? el("p", {class: "muted"}, `Sampled: 1 element in ${s.sampled.step} (evenly strided), ` +
         `${s.sampled.n.toLocaleString("en-US")} of ${s.numel.toLocaleString("en-US")}.`) : null;
  return el("div", {class: "stats-card"}, el("h3", {}, `${label}: `, el("code", {}, s.name),
            ` ${s.dtype} ${shape(s.shape)}`), cards, note,
            s.histogram ? statsHistogram(s.histogram) : el("p", {class: "muted"}, "no finite values"));
}

function getJSON(url) {
  return fetch(url).then(r => r.json().catch(() => ({error: `HTTP ${r.status}`})).then(body => {
    if (!r.ok) throw new Error(body.error || `HTTP ${r.status}`);
    return body;
  }));
}

// the Statistics section: .show([[side, name], ...]) fills it, one request per tensor
function statsPanel(reasons) {
  const body = el("div", {id: "stats-body"});
  const enabled = reasons.every(r => r === null || r === undefined);
  body.append(el("p", {class: "muted"}, enabled
    ? "Pick a tensor below: min/max/mean/std, NaN/inf counts and a histogram are computed " +
      "for that tensor only."
    : `No statistics: ${reasons.filter(Boolean).join("; ")}.`));
  const node = el("section", {id: "stats"}, el("h2", {}, "Tensor statistics"), body);
  const show = pairs => {
    body.textContent = "";
    body.append(el("p", {class: "muted"}, "Computing…"));
    const label = {a: "A", b: "B"};
    Promise.all(pairs.map(([side, name]) =>
      getJSON(`/api/stats?side=${side}&name=${encodeURIComponent(name)}`)
        .catch(err => ({error: err.message, name})))).then(results => {
      body.textContent = "";
      const cards = results.map((s, i) => statsCard(pairs.length > 1 ? label[pairs[i][0]] : "tensor", s));
      body.append(pairs.length > 1 ? el("div", {class: "cols"}, ...cards) : cards[0]);
      if (node.scrollIntoView) node.scrollIntoView({behavior: "smooth", block: "start"});
    });
  };
  return {node, show, enabled};
}

function netronLink(view, side, label) {
  if (!view || !view.netron) return null;
  return el("a", {href: `/netron?side=${side}`, target: "_blank", rel: "noopener",
                  id: `netron-link${side === "a" ? "" : "-" + side}`}, label);
}

function renderModel(info) {
  document.title = `keishiki view: ${info.path}`;
  document.getElementById("title").textContent = info.path;
  const badges = document.getElementById("badges");
  badges.append(badge(info.format + (info.variant ? ` · ${info.variant}` : ""), "", "format-badge"), " ");
  const safety = safetyBadge(info.safety);
  if (safety) badges.append(safety);
  const link = netronLink(info.view, "a", "Open the graph in Netron ↗");
  if (link) document.getElementById("netron").append(link);
  const stats = statsPanel([info.view ? info.view.stats_reason : null]);
  const main = document.getElementById("main");
  main.textContent = "";
  main.append(section("Summary", summaryCards(info, "summary")), ...modelSections(info, ""),
              stats.node, tensorSection(info, stats),
              section("Raw", el("details", {}, el("summary", {}, "info --json"),
                                el("pre", {}, JSON.stringify(info, null, 2)))));
}

// ---- two models -------------------------------------------------------------------------------

const VERDICT_CLASS = {"identical": "ok", "within tolerance": "ok", "different": "bad"};

function compareSummary(a, b) {
  const sa = a.safety || {}, sb = b.safety || {};
  const rows = [
    ["path", a.path, b.path],
    ["format", a.format + (a.variant ? ` (${a.variant})` : ""), b.format + (b.variant ? ` (${b.variant})` : "")],
    ["file size", bytes(a.file_size), bytes(b.file_size)],
    ["tensors", count(a.n_tensors)[0], count(b.n_tensors)[0]],
    ["parameters", ...[a, b].map(m => { const c = count(m.n_parameters); return c[1] ? `${c[0]} (${c[1]})` : c[0]; })],
    ["tensor bytes", bytes(a.total_bytes), bytes(b.total_bytes)],
    ["dtypes", ...[a, b].map(m => Object.entries(m.dtypes || {}).map(([d, n]) => `${d}: ${n}`).join(", "))],
    ["scan", text(sa.verdict), text(sb.verdict)],
  ].map(([k, x, y]) => el("tr", {}, el("td", {class: "key"}, k), el("td", {class: "mono"}, x),
                           el("td", {class: "mono"}, y)));
  return table("compare-summary", ["", "A (reference)", "B"], rows);
}

function marks(t) {
  const out = [];
  if (t.transposed) out.push(el("span", {class: "mark", title: "B stores the transpose of A"}, "transposed"));
  if (t.how === "folded" || t.fold) {
    const f = t.fold || {};
    out.push(el("span", {class: "mark", title: `BatchNorm ${f.batchnorm ?? ""} folded in (eps ${f.eps ?? "?"})`}, "folded"));
  }
  if (t.transform) out.push(el("span", {class: "mark"}, t.transform));
  if (t.shared) out.push(el("span", {class: "mark", title: "B's tensor is paired with several of A's"}, "shared"));
  if (t.ambiguous) out.push(el("span", {class: "mark", title: "equal values; names did not decide"}, "ambiguous"));
  return out.length ? el("span", {}, ...out) : "";
}

function statusBadge(status) {
  if (!status) return "";
  const cls = status === "identical" || status === "equal" ? "ok"
            : status === "within tolerance" ? "warn" : "bad";
  return badge(status, cls);
}

function pairsSection(cmp, stats) {
  const rows = (cmp.tensors || []).map(t => {
    const both = stats.enabled ? () => stats.show([["a", t.a], ["b", t.b]]) : null;
    const sameShape = shape(t.a_shape) === shape(t.b_shape);
    const sameDtype = t.a_dtype === t.b_dtype;
    const row = el("tr", {class: t.status && !["identical", "equal", "within tolerance"].includes(t.status) ? "diverged" : ""},
      el("td", {class: "mono"}, tensorLink(t.a, both)), el("td", {class: "mono"}, tensorLink(t.b, both)),
      el("td", {}, t.how), el("td", {}, marks(t)),
      el("td", {class: "mono nowrap"}, sameShape ? shape(t.a_shape) : `${shape(t.a_shape)} / ${shape(t.b_shape)}`),
      el("td", {class: "nowrap"}, sameDtype ? t.a_dtype : `${t.a_dtype} / ${t.b_dtype}`),
      el("td", {}, statusBadge(t.status)), el("td", {class: "num"}, num(t.max_abs_diff)),
      el("td", {class: "num"}, num(t.max_rel_diff)),
      el("td", {class: "num"}, t.n_over_tolerance === undefined ? "" : num(t.n_over_tolerance)));
    row.dataset.search = `${t.a} ${t.b} ${t.how} ${t.status || ""} ${t.transposed ? "transposed" : ""} ${t.how === "folded" ? "folded" : ""}`.toLowerCase();
    return row;
  });
  const how = Object.entries(cmp.how || {}).map(([h, n]) => `${h}: ${n}`).join(", ");
  return section(`Pairs (${rows.length})`,
    el("p", {class: "muted"}, `Matched by ${how || "–"}. ` +
       (stats.enabled ? "Click a name for both tensors' statistics." : "")),
    filterBox("pair-filter", rows, "filter by name, how or status (regex)"),
    el("div", {class: "scroll"}, table("pairs", ["A", "B", "how", "marks", "shape", "dtype", "status",
                                                 "#max abs", "#max rel", "#over tol"], rows)));
}

function unmatchedTable(items, id, stats, side) {
  if (!items.length) return el("p", {class: "muted", id}, "none");
  const rows = items.map(t => el("tr", {class: t.not_counted ? "" : "diverged"},
    el("td", {class: "mono"}, tensorLink(t.name, stats.enabled ? () => stats.show([[side, t.name]]) : null)),
    el("td", {}, t.dtype), el("td", {class: "mono"}, shape(t.shape)),
    el("td", {}, t.not_counted ? `not counted: ${t.not_counted}` : "counts as a difference")));
  return el("div", {class: "scroll"}, table(id, ["name", "dtype", "shape", "why"], rows));
}

function unmatchedSection(cmp, stats) {
  const ua = cmp.unmatched_a || [], ub = cmp.unmatched_b || [];
  return section(`Unmatched (${ua.length} only in A, ${ub.length} only in B)`,
    el("div", {class: "cols"},
       el("div", {}, el("h3", {}, `Only in A (${ua.length})`), unmatchedTable(ua, "unmatched-a", stats, "a")),
       el("div", {}, el("h3", {}, `Only in B (${ub.length})`), unmatchedTable(ub, "unmatched-b", stats, "b"))));
}

// the layer-by-layer table: a `keishiki compare A B --layers --json` document, when given
function layersSection(doc) {
  if (!doc) {
    return el("section", {id: "layers"}, el("h2", {}, "Layer by layer"),
      el("p", {class: "muted"}, "Not run. To see where the two models' outputs start to differ, " +
         "run both on one prompt and pass the result:"),
      el("pre", {}, "keishiki compare A B --layers --json > layers.json\n" +
                    "keishiki view A B --layers-json layers.json"));
  }
  const first = doc.first_divergence;
  // a module's output index is shown where the module has several outputs, as the CLI does
  const outputs = {};
  for (const r of doc.layers || []) outputs[r.module] = (outputs[r.module] || 0) + 1;
  const rows = (doc.layers || []).map((r, i) => {
    const index = outputs[r.module] > 1 || r.index > 0 ? `[${r.index}]` : "";
    const cls = first && first.position === i ? "first" : r.ok === false ? "diverged" : "";
    const sameShape = shape(r.shape_a) === shape(r.shape_b);
    return el("tr", {class: cls},
      el("td", {class: "num"}, i),
      el("td", {class: "mono"}, r.module + index +
         (r.module_b && r.module_b !== r.module ? ` ↔ ${r.module_b}` : "")),
      el("td", {class: "mono nowrap"}, sameShape ? shape(r.shape_a) : `${shape(r.shape_a)} / ${shape(r.shape_b)}`),
      el("td", {class: "num"}, num(r.max_abs_diff)), el("td", {class: "num"}, num(r.max_rel_diff)),
      el("td", {class: "num"}, typeof r.cosine === "number" ? r.cosine.toFixed(6) : text(r.cosine)),
      el("td", {}, cls === "first" ? badge("first divergence", "bad")
                   : r.ok === false ? badge("over", "warn") : badge("ok", "ok")));
  });
  const facts = {verdict: doc.verdict, prompt: doc.prompt, atol: num(doc.atol),
                 rtol: doc.rtol_source ? `${num(doc.rtol)} (${doc.rtol_source})` : num(doc.rtol),
                 pairs: doc.n_pairs, "over tolerance": doc.n_over_tolerance,
                 "first divergence": first ? `${first.module} (row ${first.position})` : "none",
                 "unpaired intermediates": `${(doc.unpaired_a || []).length} in A, ${(doc.unpaired_b || []).length} in B`,
                 A: doc.a ? `${doc.a.format ?? ""} on ${doc.a.backend ?? ""}, ${doc.a.precision ?? ""}` : null,
                 B: doc.b ? `${doc.b.format ?? ""} on ${doc.b.backend ?? ""}, ${doc.b.precision ?? ""}` : null};
  return el("section", {id: "layers"}, el("h2", {}, `Layer by layer (${rows.length})`),
            kvTable(facts, "layers-facts"),
            el("div", {class: "scroll"}, table("layers-table",
              ["#", "module", "shape", "#max abs", "#rel", "#cosine", "status"], rows)));
}

function verdictSection(cmp) {
  const facts = cmp.values_compared
    ? {verdict: cmp.verdict, atol: cmp.atol, rtol: cmp.rtol, "largest abs diff": num(cmp.max_abs_diff),
       pairs: cmp.n_pairs, statuses: cmp.status_counts}
    : {verdict: "names only", "why values were not compared": cmp.values_note, pairs: cmp.n_pairs};
  const parts = [kvTable(facts, "verdict")];
  if (cmp.reasons && cmp.reasons.length) {
    parts.push(el("ul", {id: "reasons"}, ...cmp.reasons.map(r => el("li", {}, r))));
  }
  if (cmp.config_diff && Object.keys(cmp.config_diff).length) {
    const rows = Object.entries(cmp.config_diff).map(([k, [x, y]]) => el("tr", {},
      el("td", {class: "key mono"}, k), el("td", {class: "mono"}, text(x)), el("td", {class: "mono"}, text(y))));
    parts.push(el("h3", {}, "config.json keys that differ"), table("config-diff", ["key", "A", "B"], rows));
  }
  return section("Verdict", ...parts);
}

function renderCompare(a, b, cmp) {
  document.title = `keishiki view: ${a.path} vs ${b.path}`;
  document.getElementById("title").textContent = `${a.path}  ⟷  ${b.path}`;
  const badges = document.getElementById("badges");
  const verdict = cmp.values_compared ? cmp.verdict : "names only";
  badges.append(badge(`${a.format} vs ${b.format}`, "", "format-badge"), " ",
                badge(verdict, VERDICT_CLASS[verdict] || "warn", "verdict-badge"));
  const links = document.getElementById("netron");
  for (const [side, info] of [["a", a], ["b", b]]) {
    const link = netronLink(info.view, side, `${side.toUpperCase()} in Netron ↗`);
    if (link) links.append(link, " ");
  }
  const stats = statsPanel([a.view ? a.view.stats_reason : null, b.view ? b.view.stats_reason : null]);
  const main = document.getElementById("main");
  main.textContent = "";
  const details = (label, info, p) => el("details", {}, el("summary", {}, `${label}: ${info.path}`),
                                         ...modelSections(info, p));
  main.append(section("Models", compareSummary(a, b)), verdictSection(cmp), stats.node,
              pairsSection(cmp, stats), unmatchedSection(cmp, stats), layersSection(cmp.layers),
              section("Each model", details("A", a, "a-"), details("B", b, "b-")),
              section("Raw", el("details", {}, el("summary", {}, "compare --json"),
                                el("pre", {}, JSON.stringify(cmp, null, 2)))));
}

// ---- start ------------------------------------------------------------------------------------

getJSON("/api/info")
  .then(info => {
    if (!(info.view && info.view.compare)) return renderModel(info);
    return Promise.all([getJSON("/api/info?side=b"), getJSON("/api/compare")])
      .then(([b, cmp]) => renderCompare(info, b, cmp));
  })
  .catch(err => {
    const main = document.getElementById("main");
    main.textContent = "";
    main.append(el("p", {class: "err"}, `Could not load the model: ${err.message}`));
  });
