"""ONNX weight quantization with onnxruntime's own tools, as the ``onnx -> onnx`` quant edge.

- ``int8``: ``onnxruntime.quantization.quantize_dynamic`` (signed 8-bit weights of every
  ``MatMul``, activations quantized on the fly: ``DynamicQuantizeLinear`` + ``MatMulInteger``).
- ``int4``: ``onnxruntime.quantization.matmul_nbits_quantizer.MatMulNBitsQuantizer``
  (block-wise 4-bit weights, symmetric, ``block_size`` values per scale, default 32:
  ``com.microsoft.MatMulNBits``), the format onnxruntime-genai ships.

No kernel is ours: the graphs run in stock onnxruntime.  Weights above ONNX's 2 GB protobuf
limit, or a source that keeps them in external data, get one external ``.data`` file beside
the graph.  Verification (:mod:`.quant_verify`): a causal LM runs against the original on
fixed prompts (KL divergence, greedy agreement within the type's tolerance); any other graph
must load and run in onnxruntime, with its largest output difference reported.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

from ..core.atomic import final_name, steps_folder
from ..errors import InvalidRequest
from .base import ConvertOptions, StepReport, Timer

DEFAULT_BLOCK_SIZE = 32
TWO_GB = 2 * 1024**3


def uses_external_data(model_path: Path) -> bool:
    """True when any initializer of the graph at ``model_path`` lives in an external file."""
    import onnx

    model = onnx.load(str(model_path), load_external_data=False)
    return any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)


def quantize_file(
    src_model: Path,
    out_model: Path,
    quant: str,
    block_size: int | None = None,
    external_data: bool = False,
) -> dict[str, Any]:
    """Write the ``quant`` (``int8``/``int4``) version of the graph ``src_model`` to
    ``out_model``; returns facts: the tool, nodes quantized, block size."""
    import onnx

    from .._optional import require

    require("onnxruntime", extra="onnx", purpose="quantize an ONNX model")
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer
    from onnxruntime.quantization.shape_inference import quant_pre_process

    # the quantizers log every node at INFO/WARNING; the report says what they did
    logging.getLogger("onnxruntime.quantization").setLevel(logging.ERROR)
    logging.getLogger().setLevel(max(logging.getLogger().level, logging.ERROR))
    facts: dict[str, Any] = {"quant": quant, "external_data": external_data}
    # onnxruntime's pre-processing first: exporters feed MatMul a Transpose of the weight
    # (torch's Linear keeps W as [out, in]), which the quantizers skip as not constant;
    # ORT's constant folding makes it one initializer
    # in the output's hidden steps folder (and a folder of its own there: a multi-step
    # conversion keeps its earlier outputs in it), which the next run removes after a kill:
    # onnxruntime also writes an "-inferred" copy beside the file it is given
    steps = steps_folder(final_name(out_model))
    made = not steps.exists()
    work = steps / "onnx-quant-pre"
    work.mkdir(parents=True, exist_ok=True)
    pre = work / "model.onnx"
    try:
        quant_pre_process(
            str(src_model),
            str(pre),
            skip_symbolic_shape=True,
            save_as_external_data=external_data,
            all_tensors_to_one_file=True,
            external_data_location=pre.name + ".data",
        )
        if quant == "int8":
            quantize_dynamic(
                str(pre),
                str(out_model),
                op_types_to_quantize=["MatMul"],
                weight_type=QuantType.QInt8,
                use_external_data_format=external_data,
            )
            facts["tool"] = "onnxruntime.quantization.quantize_dynamic (QInt8 weights)"
            kinds = ("MatMulInteger", "DynamicQuantizeMatMul")
        else:
            block = block_size or DEFAULT_BLOCK_SIZE
            model = onnx.load(str(pre))  # external data loaded from beside the graph
            quantizer = MatMulNBitsQuantizer(model, bits=4, block_size=block, is_symmetric=True)
            quantizer.process()
            quantizer.model.save_model_to_file(
                str(out_model), use_external_data_format=external_data
            )
            facts["tool"] = "onnxruntime.quantization.MatMulNBitsQuantizer (4 bits, symmetric)"
            facts["block_size"] = block
            kinds = ("MatMulNBits",)
    finally:
        shutil.rmtree(steps if made else work, ignore_errors=True)
    written = onnx.load(str(out_model), load_external_data=False)
    facts["n_quantized"] = sum(n.op_type in kinds for n in written.graph.node)
    facts["n_matmul_left"] = sum(n.op_type == "MatMul" for n in written.graph.node)
    if not facts["n_quantized"]:
        raise InvalidRequest(
            f"{src_model}: no MatMul with a constant weight to quantize "
            f"({quant} quantizes the weights of MatMul nodes)"
        )
    return facts


def quantize_edge(src: Path, out: Path, opts: ConvertOptions) -> StepReport:
    """Edge ``onnx -> onnx`` with ``--quant int8|int4``: onnxruntime's quantizer, then the
    quantized graph run against the original (:mod:`.quant_verify`)."""
    from .graph_edges import _copy_test_data, _count_initializers, _files_bytes, carry_tokenizer
    from .hf_weights import copy_side_files
    from .onnx_ops import model_file

    src_model = model_file(Path(src))
    report = StepReport(edge="onnx -> onnx (quantize)", src=str(src), out=str(out))
    external = (
        bool(opts.external_data)
        or uses_external_data(src_model)
        or src_model.stat().st_size > TWO_GB
    )
    if opts.external_data is False:
        external = False
    with Timer() as timer:
        if out.is_dir():
            out_model = out / src_model.name
        else:
            if external:
                raise InvalidRequest(
                    f"{final_name(out)}: the weights are kept in external "
                    f"data, which needs a folder OUT (drop the .onnx suffix) "
                    f"so the .data file travels with the graph"
                )
            out_model = out
        facts = quantize_file(src_model, out_model, opts.quant, opts.block_size, external)
        if out.is_dir():
            facts["side_files"] = copy_side_files(src_model.parent, out) + carry_tokenizer(
                opts, out
            )
            facts["test_data"] = _copy_test_data(src_model.parent, out)
        report.details["onnx"] = facts
        report.details["quant"] = opts.quant
        if opts.verify:
            report.verify = verify_quantized(src_model, out_model, opts.quant)
    report.n_tensors = _count_initializers(out_model)
    report.bytes_written = _files_bytes(out)
    report.details["bytes_source"] = _files_bytes(Path(src))
    report.seconds = timer.seconds
    return report


def verify_quantized(src_model: Path, out_model: Path, quant: str) -> dict[str, Any]:
    """A causal LM: :func:`.quant_verify.onnx_quality`; another graph: both run in ORT on
    the same inputs, passing when the quantized one runs (differences reported)."""
    from .quant_verify import onnx_quality
    from .run_verify import onnx_is_causal_lm, verify_onnx_pair_graph

    if onnx_is_causal_lm(src_model):
        return onnx_quality(src_model, out_model, quant)
    result = verify_onnx_pair_graph(src_model, out_model, atol=float("inf"))
    result["note"] = (
        "not a causal LM: checked that the quantized graph runs in onnxruntime "
        "on the source's inputs; the differences are reported, not judged"
    )
    return result
