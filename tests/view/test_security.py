"""The server stays on 127.0.0.1, serves only its own files and API, and the page shows a
hostile tensor name as text."""

from __future__ import annotations

import http.client
import json
import urllib.parse

import pytest

from keishiki import inspect
from keishiki.view import ViewServer

from .conftest import HOSTILE
from .pages import offline, render_in_node, routes_of


@pytest.fixture
def hostile_server(hostile_file):
    server = ViewServer(inspect(hostile_file)).start()
    yield server
    server.stop()


def request(server, path: str, method: str = "GET", host: str = "127.0.0.1", **headers):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
    conn.putheader("Host", f"{host}:{server.port}")
    for key, value in headers.items():
        conn.putheader(key.replace("_", "-"), value)
    conn.endheaders()
    resp = conn.getresponse()
    body = resp.read()
    conn.close()
    return resp.status, body


def test_bound_to_loopback_only(hostile_server):
    assert hostile_server._httpd.server_address[0] == "127.0.0.1"
    assert request(hostile_server, "/api/info", host="localhost")[0] == 200
    for host in ("evil.example", "0.0.0.0", "192.168.1.2"):
        assert request(hostile_server, "/api/info", host=host)[0] == 403  # DNS rebinding


@pytest.mark.parametrize(
    "site, status",
    [(None, 200), ("none", 200), ("same-origin", 200), ("same-site", 403), ("cross-site", 403)],
)
@pytest.mark.parametrize("path", ["/api/info", "/api/stats?name=x", "/netron", "/"])
def test_requests_another_page_makes_are_refused(hostile_server, path, site, status):
    """A page elsewhere can make the browser GET /netron (start Netron) or /api/stats (load
    a tensor) with an <img>: browsers mark such requests (Sec-Fetch-Site), and they are
    refused; the view's own page (same-origin), a typed address and curl are not, nor a
    link to the page itself from elsewhere (a notebook: the page reads nothing)."""
    headers = {} if site is None else {"Sec_Fetch_Site": site}
    got = request(hostile_server, path, **headers)[0]
    assert (got == 403) == (status == 403 and path != "/"), (path, site, got)


@pytest.mark.parametrize(
    "path",
    [
        "/../../../../etc/passwd",
        "/..%2f..%2f..%2fetc%2fpasswd",
        "/%2e%2e/%2e%2e/etc/passwd",
        "/static/index.html",
        "/static/../server.py",
        "/server.py",
        "/__init__.py",
        "/view.js/../server.py",
        "/view.js/../../server.py",
        "//etc/passwd",
        "/./view.js/..",
        "/index.html%00.js",
        "/api/info/../../../etc/passwd",
        "/api/../server.py",
        "/netron/../../etc/passwd",
        "/static/view.js",
        "/VIEW.JS",
        "/view.js.map",
    ],
)
def test_no_path_reaches_a_file_outside_the_static_table(hostile_server, path):
    status, body = request(hostile_server, path)
    assert status == 404
    assert b"root:" not in body and b"import" not in body and b"<html" not in body


def test_only_get_and_head(hostile_server):
    assert request(hostile_server, "/", "HEAD") == (200, b"")
    for method in ("POST", "PUT", "DELETE"):
        assert request(hostile_server, "/api/info", method)[0] == 501


def test_hostile_side_and_name_parameters(hostile_server):
    status, body = request(hostile_server, "/api/info?side=../../etc/passwd")
    assert status == 404 and json.loads(body)["error"].startswith("no model")
    query = urllib.parse.urlencode({"name": HOSTILE})
    status, body = request(hostile_server, f"/api/stats?{query}")
    stats = json.loads(body)
    assert status == 200 and stats["name"] == HOSTILE and stats["max"] == 5.0


def test_csp_allows_only_own_script(hostile_server):
    conn = http.client.HTTPConnection("127.0.0.1", hostile_server.port, timeout=10)
    conn.request("GET", "/")
    resp = conn.getresponse()
    resp.read()
    csp = resp.getheader("Content-Security-Policy")
    conn.close()
    assert "default-src 'self'" in csp and "script-src" not in csp  # no inline scripts


def test_hostile_name_is_text_in_the_page(tmp_path, hostile_file):
    server = offline(ViewServer(inspect(hostile_file)))
    page = render_in_node(
        tmp_path,
        routes_of(
            server,
            **{
                "/api/stats": {
                    "name": HOSTILE,
                    "dtype": "float32",
                    "shape": [2, 3],
                    "numel": 6,
                    "n_counted": 6,
                    "sampled": None,
                    "min": 0,
                    "max": 5,
                    "mean": 2.5,
                    "std": 1.7,
                    "n_nan": 0,
                    "n_posinf": 0,
                    "n_neginf": 0,
                    "n_zero": 1,
                    "histogram": {"edges": [0, 2.5, 5], "counts": [3, 3]},
                }
            },
        ),
        click=True,
    )
    assert HOSTILE in page["main"]  # tensor table, metadata key and value, statistics
    assert "img" not in page["tags"] and "script" not in page["tags"]
    stats_url = [u for u in page["requested"] if u.startswith("/api/stats")]
    assert stats_url == ["/api/stats?side=a&name=" + urllib.parse.quote(HOSTILE, safe="()*!'")]
    assert "5" in page["stats"] and HOSTILE in page["stats"]
