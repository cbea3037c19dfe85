"""Our own decoder graph for Llama-layout causal LMs (Llama, Qwen2, Mistral): written node by node from the
PyTorch weights, as onnxruntime-genai's model builder does, so a decode step runs ~10 fused kernels a layer.

Per layer: SimplifiedLayerNormalization (SkipSimplifiedLayerNormalization after the first, which also adds the
residual), one MatMul for q, k and v together (plus their bias on Qwen2), GroupQueryAttention with the rotary
embedding inside (cos/sin tables as initializers) reading and writing one KV buffer of `capacity` positions in
place (``past_key_values.*`` and ``present.*`` are bound to the same memory: onnxruntime writes the new positions
at ``total_sequence_length - new`` and copies nothing else), the output MatMul, and the SiLU MLP. The LM head runs
only on the last ``num_logits_to_keep`` positions (1 while generating).

Rows are not padded on the left, and there is no attention mask: the graph takes what onnxruntime-genai's graph
computes from one, each row's length (``seqlens_k`` [batch] int32, the row's total positions minus one) and the
longest (``total_sequence_length`` int32). Every row's tokens start at cache column 0, so its cache column is its
position (the fused rotary's); a step writes row b's new token at column ``seqlens_k[b]`` and attends to columns
up to it, so rows of different lengths decode together with nothing masked (a prompt batch is right-padded: a
shorter row's padding positions are written past its length, overwritten by its next tokens and never read).
Packages made before held ``"gqa-inplace"``, the same graph fed an attention mask as an additive bias over
left-padded rows; the decoder loop still runs them.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from toolkit.decoding.decoder import LOGITS_TO_KEEP, SEQLENS, TOTAL_LENGTH

__all__ = ["GQA_ARCHITECTURES", "export_gqa_decoder", "supports_gqa"]

log = logging.getLogger(__name__)

# the same module layout (q/k/v/o_proj, gate/up/down_proj, RMS norms, rotary_emb); Qwen2 adds q/k/v biases
GQA_ARCHITECTURES = frozenset({"LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM"})


def supports_gqa(config: Any) -> str | None:
    """None when `config` can use the in-place GQA graph, else the reason it cannot (for one log line)."""
    architectures = getattr(config, "architectures", None) or []
    if not architectures or architectures[0] not in GQA_ARCHITECTURES:
        return f"architecture {architectures[0] if architectures else '?'} has no in-place GQA graph yet"
    if getattr(config, "sliding_window", None) and getattr(config, "use_sliding_window", True):
        window = int(config.sliding_window)
        if window < int(config.max_position_embeddings):
            return f"sliding-window attention ({window} positions) is not built into the GQA graph yet"
    heads = int(config.num_attention_heads)
    head_dim = int(getattr(config, "head_dim", None) or int(config.hidden_size) // heads)
    if head_dim % 16:
        return f"head size {head_dim} is not a multiple of 16 (onnxruntime's fused rotary needs one)"
    rope = getattr(config, "rope_scaling", None) or {}
    if rope.get("rope_type", rope.get("type", "default")) not in ("default", "linear", "llama3"):
        return f"rope scaling {rope.get('rope_type', rope.get('type'))} is not built into the GQA graph yet"
    if getattr(config, "hidden_act", "silu") != "silu":
        return f"activation {config.hidden_act} is not built into the GQA graph yet"
    return None


class _Graph:
    """Nodes and initializers being collected, with unique names."""

    def __init__(self, dtype: np.dtype) -> None:
        self.nodes: list[Any] = []
        self.initializers: list[Any] = []
        self.dtype = dtype
        self._count = 0

    def name(self, hint: str) -> str:
        self._count += 1
        return f"{hint}_{self._count}"

    def weight(self, name: str, array: np.ndarray, dtype: Any = None) -> str:
        from onnx import numpy_helper

        self.initializers.append(
            numpy_helper.from_array(np.ascontiguousarray(array, dtype=dtype or self.dtype), name)
        )
        return name

    def const(self, values: Any, dtype: Any = np.int64) -> str:
        return self.weight(self.name("const"), np.asarray(values), dtype)

    def op(
        self, op_type: str, inputs: list[str], outputs: int | list[str] = 1, domain: str = "", **attrs: Any
    ) -> list[str]:
        from onnx import helper

        names = outputs if isinstance(outputs, list) else [self.name(op_type) for _ in range(outputs)]
        self.nodes.append(
            helper.make_node(
                op_type, inputs, names, name=self.name(f"{op_type}_node"), domain=domain, **attrs
            )
        )
        return names

    def one(self, op_type: str, inputs: list[str], domain: str = "", **attrs: Any) -> str:
        return self.op(op_type, inputs, 1, domain, **attrs)[0]


def _linear(graph: _Graph, x: str, module: Any, name: str) -> str:
    """x @ W^T (+ b) of an nn.Linear."""
    out = graph.one("MatMul", [x, graph.weight(f"{name}.weight", module.weight.detach().float().numpy().T)])
    if getattr(module, "bias", None) is not None:
        out = graph.one("Add", [out, graph.weight(f"{name}.bias", module.bias.detach().float().numpy())])
    return out


def _rotary_tables(model: Any, positions: int, head_dim: int) -> tuple[np.ndarray, np.ndarray]:
    """cos and sin [positions, head_dim / 2] from the model's own rotary module (so its rope scaling applies)."""
    import torch

    rotary = model.model.rotary_emb
    ids = torch.arange(positions, dtype=torch.int64)[None]
    probe = torch.zeros(1, dtype=torch.float32)
    with torch.inference_mode():
        cos, sin = rotary(probe, ids)
    half = head_dim // 2
    return cos[0, :, :half].float().numpy(), sin[0, :, :half].float().numpy()


def _decoder_graph(model: Any, dtype: np.dtype) -> tuple[_Graph, dict[str, Any]]:
    config = model.config
    layers = int(config.num_hidden_layers)
    heads = int(config.num_attention_heads)
    kv_heads = int(getattr(config, "num_key_value_heads", None) or heads)
    hidden = int(config.hidden_size)
    head_dim = int(getattr(config, "head_dim", None) or hidden // heads)
    eps = float(config.rms_norm_eps)
    positions = int(config.max_position_embeddings)
    graph = _Graph(dtype)
    inner = model.model

    cos, sin = _rotary_tables(model, positions, head_dim)
    cos_cache = graph.weight("cos_cache", cos)
    sin_cache = graph.weight("sin_cache", sin)

    hidden_states = graph.one(
        "Gather",
        [
            graph.weight("embed_tokens.weight", inner.embed_tokens.weight.detach().float().numpy()),
            "input_ids",
        ],
    )
    residual = hidden_states
    pending: str | None = None  # the sub-block output still to be added to the residual
    for index, layer in enumerate(inner.layers):
        prefix = f"layers.{index}"
        normed, residual = _norm(
            graph, pending, residual, layer.input_layernorm, f"{prefix}.input_layernorm", eps
        )
        attention = layer.self_attn
        qkv_weight = np.concatenate(
            [
                m.weight.detach().float().numpy()
                for m in (attention.q_proj, attention.k_proj, attention.v_proj)
            ]
        ).T
        qkv = graph.one("MatMul", [normed, graph.weight(f"{prefix}.attn.qkv_proj.weight", qkv_weight)])
        if attention.q_proj.bias is not None:
            qkv_bias = np.concatenate(
                [
                    m.bias.detach().float().numpy()
                    for m in (attention.q_proj, attention.k_proj, attention.v_proj)
                ]
            )
            qkv = graph.one("Add", [qkv, graph.weight(f"{prefix}.attn.qkv_proj.bias", qkv_bias)])
        attended = graph.op(
            "GroupQueryAttention",
            [
                qkv,  # packed q, k, v: GroupQueryAttention splits them and applies the rotary itself
                "",
                "",
                f"past_key_values.{index}.key",
                f"past_key_values.{index}.value",
                SEQLENS,
                TOTAL_LENGTH,
                cos_cache,
                sin_cache,
            ],
            [graph.name("attention"), f"present.{index}.key", f"present.{index}.value"],
            domain="com.microsoft",
            num_heads=heads,
            kv_num_heads=kv_heads,
            do_rotary=1,
            rotary_interleaved=0,
        )
        pending = _linear(graph, attended[0], attention.o_proj, f"{prefix}.attn.o_proj")
        normed, residual = _norm(
            graph,
            pending,
            residual,
            layer.post_attention_layernorm,
            f"{prefix}.post_attention_layernorm",
            eps,
        )
        mlp = layer.mlp
        gate = _linear(graph, normed, mlp.gate_proj, f"{prefix}.mlp.gate_proj")
        up = _linear(graph, normed, mlp.up_proj, f"{prefix}.mlp.up_proj")
        activated = graph.one("Mul", [gate, graph.one("Sigmoid", [gate])])
        pending = _linear(graph, graph.one("Mul", [activated, up]), mlp.down_proj, f"{prefix}.mlp.down_proj")
    normed, _ = _norm(graph, pending, residual, inner.norm, "norm", eps)
    # the LM head only over the last num_logits_to_keep positions
    keep = graph.one("Neg", [graph.one("Reshape", [LOGITS_TO_KEEP, graph.const([1])])])
    last = graph.one("Slice", [normed, keep, graph.const([np.iinfo(np.int64).max]), graph.const([1])])
    head = model.lm_head.weight.detach().float().numpy().T
    graph.op("MatMul", [last, graph.weight("lm_head.weight", head)], ["logits"])
    shapes = {
        "layers": layers,
        "kv_heads": kv_heads,
        "head_dim": head_dim,
        "vocab": int(config.vocab_size),
        "rotary_inv_freq": tuple(float(f) for f in inner.rotary_emb.inv_freq.float().numpy()),
    }
    return graph, shapes


def _norm(
    graph: _Graph, pending: str | None, residual: str, module: Any, name: str, eps: float
) -> tuple[str, str]:
    """(normed, new residual): RMS norm of the residual, after adding `pending` to it (fused) when there is one."""
    gamma = graph.weight(f"{name}.weight", module.weight.detach().float().numpy())
    if pending is None:
        return graph.one(
            "SimplifiedLayerNormalization", [residual, gamma], axis=-1, epsilon=eps, stash_type=1
        ), residual
    normed, _, _, summed = graph.op(
        "SkipSimplifiedLayerNormalization", [pending, residual, gamma], 4, domain="com.microsoft", epsilon=eps
    )
    return normed, summed


def _onnx_type(dtype: np.dtype) -> int:
    from onnx import helper

    return int(helper.np_dtype_to_tensor_dtype(np.dtype(dtype)))


def export_gqa_decoder(model: Any, out: Path, dtype: str = "float32") -> dict[str, Any]:
    """Write `model`'s in-place GQA decoder graph to `out`; returns its layers, kv heads, head size, vocab and
    rotary frequencies."""
    import onnx
    from onnx import TensorProto, helper

    np_dtype = np.dtype(dtype)
    graph, shapes = _decoder_graph(model, np_dtype)
    elem = _onnx_type(np_dtype)
    cache = ["batch", shapes["kv_heads"], "cache", shapes["head_dim"]]
    inputs = [
        helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "sequence"]),
        helper.make_tensor_value_info(SEQLENS, TensorProto.INT32, ["batch"]),
        helper.make_tensor_value_info(TOTAL_LENGTH, TensorProto.INT32, []),
        helper.make_tensor_value_info(LOGITS_TO_KEEP, TensorProto.INT64, []),
    ]
    outputs = [helper.make_tensor_value_info("logits", elem, ["batch", "kept", shapes["vocab"]])]
    for layer in range(shapes["layers"]):
        for kind in ("key", "value"):
            inputs.append(helper.make_tensor_value_info(f"past_key_values.{layer}.{kind}", elem, cache))
            outputs.append(helper.make_tensor_value_info(f"present.{layer}.{kind}", elem, cache))
    proto = helper.make_model(
        helper.make_graph(graph.nodes, "edge_gqa_decoder", inputs, outputs, graph.initializers),
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)],
        producer_name="edge-toolkit",
    )
    proto.ir_version = 8
    out.parent.mkdir(parents=True, exist_ok=True)
    # weights in external data whatever the size: onnxruntime maps the file, where a self-contained model's
    # weights stay resident in its parsed protobuf beside the prepacked copies (peak RSS ~1.6x the weights)
    # (shape constants under 1 KB stay inline: onnxruntime's shape inference reads them)
    onnx.save_model(proto, str(out), save_as_external_data=True, location=out.name + ".data")
    return shapes
