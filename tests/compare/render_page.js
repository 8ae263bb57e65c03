// Runs the view page's script against a minimal DOM and prints what it rendered.
// Usage: node render_page.js view.js routes.json
//   routes.json: {"/api/info": {...}, "/api/compare": {...}, "/api/stats": {...}, ...}: the
//   answer for each URL (the query string is matched first whole, then without it).
// Env: FILTER (typed into the tensor/pair filter), CLICK=1 (clicks the first tensor link).
// Prints JSON: title, badges, netron, main text, ids seen, rows left by the filter, the
// tags created (the test checks no <img>/<script> ever was), the stats URL requested.
"use strict";
const fs = require("fs");
const [pageJs, routesPath] = process.argv.slice(2);
const routes = JSON.parse(fs.readFileSync(routesPath, "utf8"));
const ids = {};
const tags = {};
const requested = [];

class Node {}
class TextNode extends Node {
  constructor(t) { super(); this.text = t; }
  get textContent() { return this.text; }
}
class Element extends Node {
  constructor(tag) {
    super(); this.tag = tag; this.children = []; this.attrs = {}; this.dataset = {};
    this.style = {}; this.className = ""; this.listeners = {}; this.value = "";
  }
  append(...nodes) {
    for (const n of nodes) this.children.push(n instanceof Node ? n : new TextNode(String(n)));
  }
  setAttribute(k, v) { this.attrs[k] = v; if (k === "id") ids[v] = this; }
  addEventListener(ev, fn) { this.listeners[ev] = fn; }
  set textContent(t) { this.children = t ? [new TextNode(t)] : []; }
  get textContent() { return this.children.map(c => c.textContent).join(" "); }
  find(pred) {
    if (pred(this)) return this;
    for (const c of this.children) {
      const hit = c instanceof Element ? c.find(pred) : null;
      if (hit) return hit;
    }
    return null;
  }
}
global.Node = Node;
const roots = {title: new Element("h1"), badges: new Element("span"),
               netron: new Element("span"), main: new Element("main")};
global.document = {
  title: "",
  createElement: tag => { tags[tag] = (tags[tag] || 0) + 1; return new Element(tag); },
  createTextNode: t => new TextNode(t),
  getElementById: id => roots[id] || ids[id] || null,
};
global.fetch = url => {
  requested.push(url);
  const body = url in routes ? routes[url] : routes[url.split("?")[0]];
  const ok = body !== undefined && !(body && body.error);
  return Promise.resolve({ok, status: ok ? 200 : 404,
                          json: () => Promise.resolve(body === undefined ? {} : body)});
};
eval(fs.readFileSync(pageJs, "utf8"));

function rowsShown(tableId) {
  const table = ids[tableId];
  if (!table) return null;
  const body = table.children.find(c => c.tag === "tbody");
  return body.children.filter(r => r.style.display !== "none").length;
}

setTimeout(() => {
  let filtered = null;
  const filter = ids["tensor-filter"] || ids["pair-filter"];
  if (filter) {
    filter.value = process.env.FILTER || "";
    filter.listeners.input();
    filtered = rowsShown(ids["tensor-filter"] ? "tensors" : "pairs");
  }
  if (process.env.CLICK) {
    const link = roots.main.find(n => n.className === "tensor-link");
    if (link) link.listeners.click({preventDefault() {}});
  }
  setTimeout(() => {
    process.stdout.write(JSON.stringify({
      title: document.title, heading: roots.title.textContent, badges: roots.badges.textContent,
      netron: roots.netron.textContent, main: roots.main.textContent, ids: Object.keys(ids),
      filtered, tags, requested,
      stats: ids["stats"] ? ids["stats"].textContent : null}));
  }, 50);
}, 50);
