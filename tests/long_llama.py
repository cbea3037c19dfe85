"""A tiny random Llama with 2,048 positions whose eos logit is 0 (greedy decoding never stops early), with the
test tokenizer and chat template, converted: long generations for the serving tests and the hardening
benchmark (`benchmarks/generate_hardening.py`)."""

from __future__ import annotations

from pathlib import Path

from test_generate import CHAT_TEMPLATE, _tokenizer

EOS_ID = 2


def build_long_llama(folder: Path, name: str = "long-llama") -> Path:
    """Save the model as `folder`/`name` (a Hugging Face folder) and convert it to `folder`/package."""
    import torch
    import transformers as tf
    from transformers import PreTrainedTokenizerFast

    from converters import convert

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=_tokenizer(), bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    torch.manual_seed(0)
    config = tf.LlamaConfig(
        vocab_size=len(tokenizer), bos_token_id=1, eos_token_id=EOS_ID, pad_token_id=0, hidden_size=32,
        intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=2048,
    )  # fmt: skip
    model = tf.LlamaForCausalLM(config)
    with torch.no_grad():
        model.lm_head.weight[EOS_ID] = 0
    source = folder / name
    model.save_pretrained(source)
    tokenizer.save_pretrained(source)
    return convert(str(source), folder / "package").path
