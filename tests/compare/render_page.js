// Runs the view page's script against a minimal DOM and prints the rendered text.
// Usage: node render_page.js page.js info.json  -> the text of <main> plus ids seen, as JSON.
"use strict";
const fs = require("fs");
const [pageJs, infoPath] = process.argv.slice(2);
const info = JSON.parse(fs.readFileSync(infoPath, "utf8"));
const ids = {};

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
}
global.Node = Node;
const roots = {title: new Element("h1"), badges: new Element("span"),
               netron: new Element("span"), main: new Element("main")};
global.document = {
  title: "",
  createElement: tag => new Element(tag),
  createTextNode: t => new TextNode(t),
  getElementById: id => roots[id] || ids[id] || null,
};
global.fetch = url => Promise.resolve({ok: url === "/api/info", status: 200,
                                       json: () => Promise.resolve(info)});
eval(fs.readFileSync(pageJs, "utf8"));
setTimeout(() => {
  // exercise the tensor filter too
  const filter = ids["tensor-filter"];
  let filtered = null;
  if (filter) {
    filter.value = process.env.FILTER || "";
    filter.listeners.input();
    const table = ids["tensors"];
    if (!table) {  // render() failed: show what the page says instead
      console.log(roots.main.textContent);
      process.exit(1);
    }
    const body = table.children.find(c => c.tag === "tbody");
    filtered = body.children.filter(r => r.style.display !== "none").length;
  }
  process.stdout.write(JSON.stringify({
    title: document.title, badges: roots.badges.textContent, netron: roots.netron.textContent,
    main: roots.main.textContent, ids: Object.keys(ids), filtered}));
}, 50);
