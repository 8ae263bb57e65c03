"""Built-in example models, made on the spot (no download): the demo and the tests use them.

``build_tiny_llama(out)`` writes a Hugging Face folder with a 2-layer ``LlamaForCausalLM``
(hidden size 64, 4 heads, 2 KV heads) with random weights, a byte-level BPE tokenizer trained
here on a few sentences, a chat template and a generation config.  Needs the ``torch`` and
``hf`` extras.
"""

from __future__ import annotations

from pathlib import Path

from ._optional import require

TRAINING_TEXT = [
    "Hello, world! keishiki reads every model format.",
    "The quick brown fox jumps over the lazy dog.",
    "初めまして、こんにちは。今日はいい天気ですね。",
    "A model moves between formats safely, fast and verifiably.",
    "safetensors, ONNX, GGUF, TorchScript and PyTorch pickles.",
    "Once upon a time there was a tiny llama with two layers.",
    "def forward(self, x): return self.linear(x)",
    "0 1 2 3 4 5 6 7 8 9 10 100 1000",
] * 4

CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>{{ message['content'] }}</s>"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def train_tokenizer(vocab_size: int = 384):
    """A byte-level BPE ``PreTrainedTokenizerFast`` trained on :data:`TRAINING_TEXT`."""
    tokenizers = require("tokenizers", purpose="train the example tokenizer")
    transformers = require("transformers", purpose="build the example model")
    from tokenizers import decoders, models, pre_tokenizers, trainers

    tok = tokenizers.Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<pad>", "<s>", "</s>", "<|user|>", "<|assistant|>", "<|system|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(TRAINING_TEXT, trainer=trainer)
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        model_input_names=["input_ids", "attention_mask"],
        chat_template=CHAT_TEMPLATE,
    )


def build_tiny_llama(
    out: str | Path,
    seed: int = 0,
    layers: int = 2,
    hidden: int = 64,
    heads: int = 4,
    kv_heads: int = 2,
    intermediate: int = 128,
    max_positions: int = 256,
) -> Path:
    """Write a random-weight tiny Llama (model + tokenizer) to the folder ``out``; return it."""
    torch = require("torch", purpose="build the example model")
    transformers = require("transformers", purpose="build the example model")
    out = Path(out)
    tokenizer = train_tokenizer()
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=max_positions,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = transformers.LlamaForCausalLM(config).eval()
    with torch.no_grad():
        # Exporters merge identical tensors (all-ones norms) and their names vanish:
        # perturb every norm so each parameter stays distinct.
        for name, param in model.named_parameters():
            if "norm" in name:
                param.add_(torch.randn_like(param) * 0.02)
    model.generation_config.do_sample = False
    transformers.utils.logging.disable_progress_bar()  # keep the demo's output readable
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
