"""``keishiki view PATH``: look at a model in a local web page (loopback only, works offline).

>>> from keishiki.view import ViewServer
>>> server = ViewServer(keishiki.inspect("model.onnx"), port=0).start()
>>> print(server.url); ...; server.stop()

The page (``static/index.html``, no external scripts) shows the summary, metadata and config,
a filterable tensor table, ONNX graph facts (inputs/outputs, operator histogram), GGUF
key/values and the scan verdict, and links to Netron for graph formats when the ``netron``
package is installed.
"""

from __future__ import annotations

from .server import HOST, ViewServer, free_port

__all__ = ["HOST", "ViewServer", "free_port"]
