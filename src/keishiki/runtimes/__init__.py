"""Run a causal language model in whatever format it is in, with vLLM's offline API.

>>> from keishiki import LLM, SamplingParams
>>> llm = LLM(model="tiny-llama/")                     # backend="auto" picks the engine
>>> outs = llm.generate(["Hello"], SamplingParams(temperature=0.8, top_p=0.95, seed=0))
>>> outs[0].outputs[0].text, llm.backend, llm.backend_reason

Engines: ``torch`` (Hugging Face folder via transformers), ``onnxruntime`` (ONNX graph with or
without KV cache; needs neither torch nor transformers), ``torchscript`` (traced LM) and
``vllm`` (GPU).  The first three share one numpy sampler, so a seed gives the same tokens on
each.  Nothing heavy is imported until a model is loaded.
"""

from __future__ import annotations

from .llm import LLM
from .outputs import CompletionOutput, RequestOutput
from .params import SamplingParams

__all__ = ["LLM", "SamplingParams", "RequestOutput", "CompletionOutput"]
