"""Render the view page's script in node against a minimal DOM (``tests/compare/render_page.js``)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from keishiki.view import ViewServer
from keishiki.view.server import static_file, to_json

RENDER_JS = Path(__file__).parents[1] / "compare" / "render_page.js"


def routes_of(server: ViewServer, **extra) -> dict:
    """The JSON answers of a (not started) server, keyed by URL, plus ``extra``."""
    routes = {"/api/info": server.payloads["a"]}
    if "b" in server.payloads:
        routes["/api/info?side=b"] = server.payloads["b"]
        routes["/api/compare"] = server.comparison
    routes.update(extra)
    return routes


def render_in_node(
    tmp_path: Path, routes: dict, filter_text: str = "", click: bool = False
) -> dict:
    """Run view.js with ``routes`` as the API; what the page shows (see render_page.js)."""
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed")
    (tmp_path / "routes.json").write_bytes(to_json(routes))
    (tmp_path / "view.js").write_bytes(static_file("view.js"))
    env = {"FILTER": filter_text, **({"CLICK": "1"} if click else {})}
    result = subprocess.run(
        [node, str(RENDER_JS), str(tmp_path / "view.js"), str(tmp_path / "routes.json")],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    page = json.loads(result.stdout)
    assert "Could not load" not in page["main"], page["main"]
    return page


def offline(server: ViewServer) -> ViewServer:
    """``server`` with its socket closed: only its payloads are used."""
    server._httpd.server_close()
    return server
