"""Fuse an exported encoder's unmasked self-attention into onnxruntime's ``com.microsoft.MultiHeadAttention``.

The torch exporter writes attention as reshapes, transposes, ``MatMul(q * s1, k^T * s2)``, ``Softmax`` and
``MatMul(p, v)``; onnxruntime's own optimizer does not recognise that form (its BART/Whisper fusions expect
other shapes), so the 1500-frame attention of a Whisper encoder runs as two large matmuls and a softmax over a
[heads, 1500, 1500] tensor it writes to memory. ``MultiHeadAttention`` (CPU and CUDA) computes the same thing
blockwise without that tensor. Only attention without a mask or bias between the matmul and the softmax is
fused; anything else is left as it is. The caller validates the result against PyTorch as for any export.

TensorRT has no ``MultiHeadAttention``: on that provider those nodes run on CUDA between TensorRT subgraphs.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from onnx import GraphProto, NodeProto

__all__ = ["attention_heads", "fuse_attention"]

_HEADS_FIRST = [0, 2, 1, 3]  # [batch, seq, heads, dim] -> [batch, heads, seq, dim]
_KEYS_TRANSPOSED = [0, 2, 3, 1]  # [batch, seq, heads, dim] -> [batch, heads, dim, seq]


def fuse_attention(path: Path, num_heads: int) -> int:
    """Rewrite the ONNX file at `path` in place with every unmasked attention fused; the number fused (0: the
    file is untouched, as it is when its weights live in external data)."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(path), load_external_data=False)
    graph = model.graph
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in graph.initializer):
        return 0
    producers = {out: node for node in graph.node for out in node.output}
    consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
    for node in graph.node:
        for name in node.input:
            consumers[name].append(node)
    outputs = {o.name for o in graph.output}
    constants = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            constants[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)

    def only_feeds(name: str, node: onnx.NodeProto) -> bool:
        return name not in outputs and [id(n) for n in consumers[name]] == [id(node)]

    def perm(node: onnx.NodeProto) -> list[int]:
        return next((list(a.ints) for a in node.attribute if a.name == "perm"), [])

    def unscaled(name: str, user: onnx.NodeProto) -> tuple[str, float, list[onnx.NodeProto]]:
        """(input, scale, Mul node) when `name` is a Mul by a scalar constant used only by `user`."""
        node = producers.get(name)
        if node is None or node.op_type != "Mul" or not only_feeds(name, user):
            return name, 1.0, []
        for index, other in ((0, 1), (1, 0)):
            value = constants.get(node.input[other])
            if value is not None and value.size == 1:
                return node.input[index], float(value.reshape(-1)[0]), [node]
        return name, 1.0, []

    def split_heads(
        name: str, user: onnx.NodeProto, order: list[int]
    ) -> tuple[str, list[onnx.NodeProto]] | None:
        """The [batch, seq, hidden] tensor behind Transpose(order) of Reshape(tensor, [batch, seq, heads, dim])."""
        transpose = producers.get(name)
        if transpose is None or transpose.op_type != "Transpose" or perm(transpose) != order:
            return None
        reshape = producers.get(transpose.input[0])
        if reshape is None or reshape.op_type != "Reshape" or not only_feeds(name, user):
            return None
        if not only_feeds(transpose.input[0], transpose):
            return None
        return reshape.input[0], [transpose, reshape]

    fused: list[tuple[onnx.NodeProto, onnx.NodeProto, list[onnx.NodeProto]]] = []
    for softmax in graph.node:
        if softmax.op_type != "Softmax":
            continue
        axis = next((a.i for a in softmax.attribute if a.name == "axis"), -1)
        scores = producers.get(softmax.input[0])
        users = consumers[softmax.output[0]]
        if axis not in (-1, 3) or scores is None or scores.op_type != "MatMul" or len(users) != 1:
            continue
        weighted = users[0]
        if weighted.op_type != "MatMul" or weighted.input[0] != softmax.output[0]:
            continue
        if not only_feeds(softmax.input[0], softmax):
            continue
        query, query_scale, query_mul = unscaled(scores.input[0], scores)
        key, key_scale, key_mul = unscaled(scores.input[1], scores)
        parts = (
            split_heads(query, query_mul[0] if query_mul else scores, _HEADS_FIRST),
            split_heads(key, key_mul[0] if key_mul else scores, _KEYS_TRANSPOSED),
            split_heads(weighted.input[1], weighted, _HEADS_FIRST),
        )
        merged = _merged_heads(weighted, consumers, only_feeds, perm)
        if any(p is None for p in parts) or merged is None:
            continue
        flat = [p[0] for p in parts if p is not None]
        removed = [softmax, scores, weighted, *query_mul, *key_mul, *merged]
        removed += [node for p in parts if p is not None for node in p[1]]
        attention = helper.make_node(
            "MultiHeadAttention",
            flat,
            [merged[-1].output[0]],
            name=f"{softmax.name or 'attention'}/MultiHeadAttention",
            domain="com.microsoft",
            num_heads=num_heads,
            scale=query_scale * key_scale,
        )
        fused.append((attention, merged[-1], removed))
    if not fused:
        return 0
    gone = {id(node) for _, _, removed in fused for node in removed}
    # each fused node stands where its output's Reshape stood: after everything it reads
    place = {id(reshape): attention for attention, reshape, _ in fused}
    kept = [place.get(id(node), node) for node in graph.node if id(node) in place or id(node) not in gone]
    _replace_nodes(graph, _without_dead_nodes(kept, outputs))
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    staged = path.with_name(path.name + ".fusing")
    onnx.save(model, str(staged))
    staged.replace(path)
    return len(fused)


def _merged_heads(
    weighted: NodeProto,
    consumers: dict[str, list[NodeProto]],
    only_feeds: Callable[[str, NodeProto], bool],
    perm: Callable[[NodeProto], list[int]],
) -> list[NodeProto] | None:
    """[Transpose(0,2,1,3), Reshape] after the weighted sum, merging the heads back to [batch, seq, hidden]."""
    users = consumers[weighted.output[0]]
    if len(users) != 1 or users[0].op_type != "Transpose" or perm(users[0]) != _HEADS_FIRST:
        return None
    transpose = users[0]
    after = consumers[transpose.output[0]]
    if len(after) != 1 or after[0].op_type != "Reshape" or not only_feeds(transpose.output[0], after[0]):
        return None
    return [transpose, after[0]]


def _without_dead_nodes(nodes: Sequence[NodeProto], outputs: set[str]) -> list[NodeProto]:
    """`nodes` without those whose outputs nothing reads (the shape arithmetic of removed reshapes)."""
    nodes = list(nodes)
    while True:
        read = {name for node in nodes for name in node.input} | outputs
        alive = [node for node in nodes if any(out in read for out in node.output)]
        if len(alive) == len(nodes):
            return alive
        nodes = alive


def _replace_nodes(graph: GraphProto, nodes: Sequence[NodeProto]) -> None:
    del graph.node[:]
    graph.node.extend(nodes)


def attention_heads(config: object) -> int | None:
    """The encoder's attention heads from a transformers config, None when it names none."""
    for name in ("encoder_attention_heads", "num_heads", "num_attention_heads"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None
