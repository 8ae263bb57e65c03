"""The view in a real browser: headless Chromium (Debian's ``chromium`` package) driven by
Playwright through ``executable_path`` (Playwright's own browser download is not needed).
Skips, saying why, where Playwright or a Chromium binary is missing (CI has neither).

``KEISHIKI_VIEW_SCREENSHOTS=DIR`` also saves the model page and its statistics panel as
``DIR/view-model.png`` and ``DIR/view-stats.png`` (docs/ holds them; docs/compare_view.md
says how its comparison screenshot was made).
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest

from keishiki import inspect
from keishiki.view import ViewServer
from keishiki.view.payload import compare_payload
from tests.conftest import corpus_path

from .conftest import HOSTILE
from .test_compare_page import LAYERS

pytestmark = pytest.mark.slow
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def chromium() -> str | None:
    """The system Chromium: $KEISHIKI_CHROMIUM, else the first of BROWSERS on PATH."""
    return os.environ.get("KEISHIKI_CHROMIUM") or next(
        (p for p in map(shutil.which, BROWSERS) if p), None
    )


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="playwright is not installed (pip install playwright)"
    )
    path = chromium()
    if path is None:
        pytest.skip("no Chromium binary (apt-get install chromium, or set KEISHIKI_CHROMIUM)")
    with sync_api.sync_playwright() as pw:
        # --no-sandbox: Chromium's sandbox needs user namespaces that containers (and root) lack
        browser = pw.chromium.launch(executable_path=path, args=["--no-sandbox"])
        yield browser
        browser.close()


@pytest.fixture
def page(browser):
    page = browser.new_page(viewport={"width": 1280, "height": 860})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    yield page
    page.close()
    assert not errors, errors  # no script error, no failed request, no CSP violation


@pytest.fixture
def serve():
    servers = []

    def start(a, b=None, **kwargs) -> ViewServer:
        ma = inspect(a)
        mb = inspect(b) if b is not None else None
        cmp = compare_payload(ma, mb, **kwargs) if mb is not None else None
        servers.append(ViewServer(ma, other=mb, comparison=cmp).start())
        return servers[-1]

    yield start
    for server in servers:
        server.stop()


def open_page(page, server: ViewServer) -> None:
    page.goto(server.url)
    page.wait_for_selector("#main section")


def screenshot(page, name: str, full_page: bool = False) -> None:
    folder = os.environ.get("KEISHIKI_VIEW_SCREENSHOTS")
    if folder:
        page.screenshot(path=str(Path(folder) / f"view-{name}.png"), full_page=full_page)


def test_model_page_and_tensor_statistics(page, serve):
    server = serve(corpus_path("gguf/llama.cpp-convert/tiny-bert-q8_0.gguf"))
    open_page(page, server)
    # the parameter count stays on one line: "493.89K" with the exact count under it
    value = page.locator("#summary .stat", has_text="parameters").locator(".value")
    assert value.inner_text() == "493.89K" and value.bounding_box()["height"] < 30
    assert (
        page.locator("#summary .stat", has_text="parameters").locator(".sub").inner_text()
        == "493,888"
    )
    # GGUF general.* keys once (in the key/value table, with their type), not twice
    keys = page.locator("td.key").all_inner_texts()
    assert (
        keys.count("general.architecture") == 1
        and "Metadata" not in page.locator("h2").all_inner_texts()
    )
    assert (
        page.locator("#gguf-kv tr", has_text="tokenizer.ggml.tokens").inner_text().count("[PAD]")
        == 1
    )
    screenshot(page, "model")
    page.locator(".tensor-link", has_text="blk.0.attn_q.weight").click()
    page.wait_for_selector(".stats-card")
    expected = server.stats("a", "blk.0.attn_q.weight")
    card = page.locator(".stats-card")
    assert card.locator(".stat", has_text="elements").locator(".value").inner_text() == "256"
    mean = float(format(expected["mean"], ".4g"))  # the page's 4 significant digits
    assert float(card.locator(".stat", has_text="mean").locator(".value").inner_text()) == mean
    assert page.locator("#stats-hist div").count() == len(expected["histogram"]["counts"])
    screenshot(page, "stats")


def test_pytorch_details_are_tables_and_no_netron_link(page, serve):
    server = serve(corpus_path("pytorch_legacy/torch-1.13.1-debian/tinynet_state_dict_legacy.pt"))
    open_page(page, server)
    details = page.locator("section", has=page.locator("h2", has_text="PyTorch details"))
    row = details.locator("#details-pytorch > tbody > tr", has_text="kind").first
    assert row.locator("td").nth(1).inner_text() == "state_dict"
    sys_info = details.locator("#details-pytorch > tbody > tr", has_text="sys_info")
    assert sys_info.locator("table td.key").all_inner_texts()[:2] == [
        "protocol_version",
        "little_endian",
    ]
    assert details.locator("pre").count() == 0  # no raw JSON
    assert page.locator("#netron-link").count() == 0  # Netron draws no graph for a state dict


def test_compare_page(page, serve, seq_files):
    server = serve(seq_files["safetensors"], seq_files["onnx"], layers=LAYERS)
    open_page(page, server)
    assert page.locator("#verdict-badge").inner_text() == "identical"
    assert page.locator("#pairs tbody tr").count() == 4
    assert page.locator("#pairs .mark", has_text="transposed").count() == 2
    assert page.locator("#layers-table tr.first").inner_text().startswith("1\tmodel.layers.0.mlp")
    page.locator("#pairs .tensor-link", has_text="onnx::MatMul_12").click()
    page.wait_for_selector(".stats-card >> nth=1")
    shapes = page.locator(".stats-card h3").all_inner_texts()
    assert shapes == ["A: 0.weight float32 [8, 4]", "B: onnx::MatMul_12 float32 [4, 8]"]


def test_hostile_names_are_shown_not_run(page, serve, hostile_file):
    server = serve(hostile_file)
    open_page(page, server)
    assert page.evaluate("window.__pwned") is None
    assert page.locator("#main img, #main script").count() == 0
    assert page.locator("#tensors .tensor-link").first.inner_text() == HOSTILE
    page.locator("#tensors .tensor-link").first.click()
    page.wait_for_selector(".stats-card")
    assert page.locator(".stats-card code").inner_text() == HOSTILE
    assert page.evaluate("window.__pwned") is None


def test_gguf_comparison_marks(page, serve, llama_gguf_pair):
    """HF names against GGUF names: Q/K rows permuted, a Q8_0 tensor."""
    hf, gguf_path, _ = llama_gguf_pair
    server = serve(hf, gguf_path, atol=0.05)
    open_page(page, server)
    assert page.locator("#pairs .mark", has_text=re.compile("llama-rope")).count() == 2
    assert page.locator("#pairs .mark", has_text="q8_0").count() == 0  # dtypes, not marks
    assert "q8_0" in page.locator("#pairs").inner_text()
