"""PyTorch and TorchScript intermediates.

- Hugging Face folders (and GGUF files, through their dequantized folder) load exactly as
  the torch backend loads them (:class:`keishiki.runtimes.torch_backend.TorchBackend`); a
  forward hook on every module records its outputs, in the order modules finish.
- TorchScript: hooks do not fire inside a compiled graph, so the forward graph is inlined
  (each node then carries the call stack of modules it came from), tuples are lowered, the
  values leaving each module's scope become extra graph outputs, and the edited graph runs
  as a function on the module's own weights.  torch has no public API for running an edited
  graph: ``torch._C._create_function_from_graph`` is the one torch.jit itself uses.  Values
  inside control-flow blocks of a scripted model (``prim::If``/``prim::Loop`` bodies) are not
  exposed, only those of the top-level graph.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np

from .._optional import require
from ..errors import InvalidRequest, RuntimeUnavailable
from .intermediates import Capture, Probe, Side, escaping_values, float_array, hierarchy_parts

# nodes that hand their input on unchanged in value (dtype casts, layout copies)
_FORWARDING = {"aten::to", "aten::contiguous", "aten::clone", "aten::detach", "aten::type_as"}


def _flat_tensors(value: Any, torch) -> list:
    """The tensors in a module's output (tuples, lists, dicts and ModelOutputs walked in
    order; caches and None skipped)."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (tuple, list)):
        return [t for item in value for t in _flat_tensors(item, torch)]
    if isinstance(value, dict):
        return [t for item in value.values() for t in _flat_tensors(item, torch)]
    return []


def _numpy(tensor) -> np.ndarray | None:
    if not tensor.is_floating_point():
        return None
    return float_array(tensor.detach().float().cpu().numpy())


def capture_hf(side: Side, token_ids: list[int]) -> Capture:
    """A forward hook on every module of the transformers model; one forward, no cache."""
    from ..runtimes.torch_backend import TorchBackend

    torch = require("torch", purpose="run a Hugging Face model")
    backend = TorchBackend(side.model_file)
    model = backend.model
    _check_ids(side, token_ids, backend.vocab_size)
    probes: list[Probe] = []
    calls: Counter = Counter()

    def hook(name: str):
        def record(_module, _args, output):
            calls[name] += 1
            # a module called twice (shared) gets name#2 for its second call
            key = name if calls[name] == 1 else f"{name}#{calls[name]}"
            order = len(probes)
            for index, tensor in enumerate(_flat_tensors(output, torch)):
                array = _numpy(tensor)
                if array is not None:
                    probes.append(Probe(key, index, array, order, name.count(".") + 1, exact=True))

        return record

    handles = [
        module.register_forward_hook(hook(name)) for name, module in model.named_modules() if name
    ]
    ids = torch.tensor([token_ids], dtype=torch.long, device=backend.device)
    try:
        with torch.inference_mode():
            model(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                position_ids=torch.arange(ids.shape[1], device=backend.device)[None],
                use_cache=False,
            )
    finally:
        for handle in handles:
            handle.remove()
    precision = side.precision or str(backend.dtype).replace("torch.", "")
    return Capture(
        str(side.path),
        side.format,
        "torch",
        precision,
        probes,
        [f"forward hooks on {len(handles)} modules"],
    )


def _check_ids(side: Side, token_ids: list[int], vocab: int | None) -> None:
    if vocab and max(token_ids) >= vocab:
        raise InvalidRequest(
            f"{side.path}: token id {max(token_ids)} is outside its "
            f"vocabulary of {vocab}: the two models do not share a tokenizer"
        )


def capture_torchscript(side: Side, token_ids: list[int]) -> Capture:
    """Run the TorchScript archive with every module's escaping values as extra outputs.

    Raises:
        RuntimeUnavailable: the graph names no module (nothing to pair) or torch cannot run
            the edited graph.
    """
    from ..runtimes.torchscript_backend import TorchScriptBackend

    torch = require("torch", purpose="run a TorchScript model")
    backend = TorchScriptBackend(side.model_file, side.config)
    _check_ids(side, token_ids, backend.vocab_size)
    graph = backend.module.inlined_graph  # a copy: the module's own graph is not touched
    torch._C._jit_pass_lower_all_tuples(graph)
    nodes = list(graph.nodes())
    resolve = _PathResolver(backend.module)
    chains = [
        resolve(node.getModuleHierarchy()) if node.kind() != "prim::Constant" else ()
        for node in nodes
    ]
    index_of = {node: i for i, node in enumerate(nodes)}
    outputs: dict[str, Any] = {}
    consumers: dict[str, list[int]] = {}
    for node in nodes:
        for value in node.outputs():
            if isinstance(value.type(), torch._C.TensorType):
                outputs[value.debugName()] = value
                consumers[value.debugName()] = [
                    _top_level(use.user, index_of) for use in value.uses()
                ]
    returned = {v.debugName() for v in graph.return_node().inputs()}
    forwarded = {
        i: index_of.get(node.inputsAt(0).node())
        for i, node in enumerate(nodes)
        if node.kind() in _FORWARDING and node.inputsSize()
    }
    scoped = escaping_values(
        (
            (chain, [v.debugName() for v in node.outputs() if v.debugName() in outputs])
            for chain, node in zip(chains, nodes)
        ),
        {k: [i for i in v if i is not None] for k, v in consumers.items()},
        returned,
        forwarded,
    )
    wanted = list(dict.fromkeys(name for values in scoped.values() for name, _ in values))
    if not wanted:
        raise RuntimeUnavailable(
            f"{side.model_file}: its TorchScript graph records no module "
            f"call stack, so its intermediates cannot be named"
        )
    results = _run_with_outputs(
        torch, backend, graph, [outputs[n] for n in wanted], _inputs(torch, backend, token_ids)
    )
    values = dict(zip(wanted, results))
    probes = []
    for module, produced in scoped.items():
        for index, (name, node_index) in enumerate(produced):
            array = _numpy(values[name])
            if array is not None:
                probes.append(
                    Probe(module, index, array, node_index, module.count(".") + 1, name=name)
                )
    param = next(backend.module.parameters(), None)
    precision = str(param.dtype).replace("torch.", "") if param is not None else "float32"
    return Capture(
        str(side.path),
        side.format,
        "torchscript",
        precision,
        probes,
        [f"{len(wanted)} values of the inlined graph leave a module"],
    )


def _top_level(user, index_of: dict) -> int | None:
    """The index of the top-level node holding ``user`` (itself, or the ``prim::If`` /
    ``prim::Loop`` whose block it is in); None for the graph's return."""
    while user is not None and user not in index_of:
        block = user.owningBlock()
        user = block.owningNode() if block is not None else None
    return index_of.get(user) if user is not None else None


def _inputs(torch, backend, token_ids: list[int]) -> list:
    """The forward's arguments for one prefill step, as the torchscript backend feeds them:
    ids [, mask [, positions [, an empty past per cache tensor]]]."""
    ids = torch.tensor([token_ids], dtype=torch.long, device=backend.device)
    args = [ids, torch.ones_like(ids), torch.arange(ids.shape[1], device=backend.device)[None]][
        : backend.n_inputs
    ]
    if backend.cached:
        heads, head_dim = backend.past_shape
        args += [torch.zeros((1, heads, 0, head_dim), device=backend.device)] * backend.n_past
    return args


def _run_with_outputs(torch, backend, graph, extra: list, args: list) -> list:
    """Return ``extra`` alongside the graph's own result and call it on the module."""
    returned = list(graph.return_node().inputs())
    ret = graph.return_node()
    values = returned + extra
    pack = graph.create("prim::TupleConstruct", values)
    pack.insertBefore(ret)
    pack.output().setType(torch._C.TupleType([v.type() for v in values]))
    for _ in returned:
        ret.removeInput(0)
    ret.addInput(pack.output())
    try:
        function = torch._C._create_function_from_graph("keishiki_layers", graph)
        with torch.inference_mode():
            out = function(backend.module._c, *args)
    except (RuntimeError, torch.jit.Error) as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        raise RuntimeUnavailable(
            f"{backend.path}: torch could not run its graph with the "
            f"intermediate values exposed: "
            f"{lines[-1] if lines else type(exc).__name__}"
        ) from None
    return list(out)[len(returned) :]


class _PathResolver:
    """Call-stack instance names → the module's dotted path.  TorchScript records the
    modules whose forward ran (``lm.model.0``); containers without a forward (ModuleList,
    ModuleDict) leave no frame, so ``0`` is found under ``layers``."""

    def __init__(self, root):
        self.root = root
        self.cache: dict[str, tuple[str, ...]] = {}

    def __call__(self, hierarchy: str) -> tuple[str, ...]:
        if hierarchy not in self.cache:
            self.cache[hierarchy] = self._resolve(hierarchy_parts(hierarchy))
        return self.cache[hierarchy]

    def _resolve(self, parts: list[str]) -> tuple[str, ...]:
        module, path, chain = self.root, "", []
        for part in parts:
            children = dict(module.named_children())
            if part in children:
                module, step = children[part], part
            else:
                holder = next(
                    (
                        name
                        for name, child in children.items()
                        if part in dict(child.named_children())
                    ),
                    None,
                )
                if holder is None:
                    return tuple(chain)  # a frame keishiki cannot place: stop here
                module = dict(children[holder].named_children())[part]
                step = f"{holder}.{part}"
            path = f"{path}.{step}" if path else step
            chain.append(path)
        return tuple(chain)
