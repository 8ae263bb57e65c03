"""``keishiki view PATH [PATH_B]``: look at a model, or two compared, in a local web page
(loopback only, works offline).

>>> from keishiki.view import ViewServer
>>> server = ViewServer(keishiki.inspect("model.onnx"), port=0).start()
>>> print(server.url); ...; server.stop()

The page (``static/index.html`` and ``static/view.js``, no external scripts) shows the
summary, metadata and config, a filterable tensor table, ONNX graph facts (inputs/outputs,
operator histogram), GGUF key/values, format details as tables and the scan verdict;
statistics of one tensor at a time on request (:mod:`.stats`); with a second model, the
name mapping and comparison (:mod:`.payload`); and a link to Netron for models Netron
draws as a graph, when the ``netron`` package is installed (:mod:`.netron`).
"""

from __future__ import annotations

from .server import HOST, ViewServer, free_port

__all__ = ["HOST", "ViewServer", "free_port"]
