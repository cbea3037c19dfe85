"""The batching engine: one `Runner` and how requests' feeds merge into its runs (`Engine`), and what every engine
offers the scheduler (`ModelEngine`, met by `Engine` and `toolkit.serve.decoding.DecodeEngine`).

Requests are concatenated along axis 0, when every input and output has the same symbolic first dim (the
batch); otherwise each request runs alone. Other dims that differ are padded only where padding cannot change
the answer: for text packages with an ``attention_mask``, the dims of that mask are padded (``input_ids`` with
the tokenizer's pad id, the rest with 0) and outputs with the same dim are cut back per request. Anything else
is never zero-padded (a model without a mask would see the zeros): requests whose other dims differ go into
separate runs of the same batch. Padded requests are also split into runs by length where padding would cost
more than another run (`padding_groups`: a run costs `RUN_COST_ELEMENTS` plus its padded elements), so a
request's pieces that `text_pieces` cut apart are not merged back into one long run. Models with `BATCH_COUPLED_OPS` (dynamic-int8 variants) are never merged: with
one activation scale per tensor, a request's answer would depend on its batch-mates. If a merged run fails (say
one request holds an out-of-range token id), its requests run one by one so only the bad one gets the error.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from toolkit.errors import BadInputError, EdgeError
from toolkit.manifest import TensorSpec
from toolkit.preprocess import RUN_COST_ELEMENTS, padding_groups
from toolkit.runner import Runner
from toolkit.tasks.modality import TextModality

__all__ = [
    "BATCH_COUPLED_OPS",
    "RUN_COST_ELEMENTS",
    "Engine",
    "Feeds",
    "ModelEngine",
    "Outputs",
    "TextPiece",
    "text_pieces",
]

log = logging.getLogger(__name__)


# Operators whose result for one row depends on the other rows of the tensor: dynamic quantization picks
# one activation scale per tensor. A model holding any of them is never merged (a request's answer must
# not depend on its batch-mates), so a dynamic-int8 variant serves every request as sent.
BATCH_COUPLED_OPS = frozenset({"DynamicQuantizeLinear", "DynamicQuantizeMatMul", "DynamicQuantizeLSTM"})

Feeds = Mapping[str, np.ndarray]
Outputs = dict[str, np.ndarray]


@dataclass(frozen=True)
class TextPiece:
    """Some rows of a text request, padded to their own longest: the feeds, and the rows' places in the request."""

    feeds: Feeds
    rows: tuple[int, ...]


def text_pieces(
    text: TextModality, encodings: Sequence[tuple[list[int], list[int]]], max_rows: int
) -> list[TextPiece]:
    """A request's token rows (ids, type ids) split by length (`padding_groups`), each piece padded alone: the
    scheduler merges pieces of like length across requests, where one padded batch would pad every row to the
    request's longest."""
    pieces = []
    for group in padding_groups([len(ids) for ids, _ in encodings], max_rows=max_rows):
        padded = text.tokenizer.pad([encodings[i] for i in group])
        feeds = {k: v for k, v in padded.items() if k in text.input_names}
        pieces.append(TextPiece(feeds, tuple(group)))
    return pieces


@dataclass(frozen=True)
class _Slot:
    """Where one request sits in a merged batch: its rows and the sizes of its padded dims."""

    offset: int
    rows: int
    sizes: Mapping[str, int]


class Engine:
    """One `Runner` and how requests merge for it: concatenated on the batch dim, padded where safe."""

    requests_per_run: int | None = None  # requests batch freely

    def __init__(
        self,
        name: str,
        version: str,
        runner: Runner,
        pad_values: Mapping[str, int | float] | None = None,
        pad_dims: Iterable[str] = (),
        *,
        merge: bool = True,
    ) -> None:
        self.name = name
        self.version = version
        self.runner = runner
        self.inputs = runner.inputs
        self.outputs = runner.outputs
        self.batch_dim = self._batch_dim()
        self.merge = merge and self.batch_dim is not None
        self.pad_values = dict(pad_values or {})
        self.pad_dims = self._safe_pad_dims(frozenset(pad_dims))

    @property
    def label(self) -> tuple[str, str]:
        """(model, version), for metrics and thread names."""
        return (self.name, self.version)

    def _batch_dim(self) -> str | None:
        firsts = {spec.shape[0] if spec.shape else None for spec in (*self.inputs, *self.outputs)}
        if len(firsts) == 1:
            (first,) = firsts
            if isinstance(first, str):
                return first
        log.info(
            "model %s: inputs and outputs share no symbolic batch dim; requests run one at a time", self.name
        )
        return None

    def _safe_pad_dims(self, dims: frozenset[str]) -> frozenset[str]:
        """Drop padding when an output has a dynamic dim the inputs do not name (it could not be cut back)."""
        if not dims or self.batch_dim is None:
            return frozenset()
        named = {d for spec in self.inputs for d in spec.shape if isinstance(d, str)}
        for spec in self.outputs:
            unknown = [d for d in spec.shape[1:] if isinstance(d, str) and d not in named]
            if unknown:
                log.info(
                    "model %s: output %s has dim %s no input names; no padding",
                    self.name,
                    spec.name,
                    unknown[0],
                )
                return frozenset()
        return dims - {self.batch_dim}

    def dim_sizes(self, feeds: Feeds) -> dict[str, int]:
        """Each symbolic dim's size in `feeds`; a BadInputError when two inputs disagree on one."""
        sizes: dict[str, int] = {}
        seen: dict[str, str] = {}
        for spec in self.inputs:
            array = feeds[spec.name]
            for dim, size in zip(spec.shape, array.shape, strict=True):
                if not isinstance(dim, str):
                    continue
                if dim in sizes and sizes[dim] != size:
                    raise BadInputError(
                        f"input '{spec.name}': dimension '{dim}' is {size} but input '{seen[dim]}' has {sizes[dim]}; "
                        "inputs sharing a dimension must agree"
                    )
                sizes[dim] = size
                seen[dim] = spec.name
        return sizes

    def rows(self, feeds: Feeds) -> int:
        """The request's batch size (1 when the model has no batch dim)."""
        if self.batch_dim is None:
            return 1
        return int(feeds[self.inputs[0].name].shape[0])

    def _group_key(self, feeds: Feeds) -> tuple[tuple[int, ...], ...]:
        """Requests with equal keys can share one run: every dim but the batch and the padded ones agrees."""
        return tuple(
            tuple(
                size
                for axis, (dim, size) in enumerate(zip(spec.shape, feeds[spec.name].shape, strict=True))
                if axis > 0 and dim not in self.pad_dims
            )
            for spec in self.inputs
        )

    def _merge(self, jobs: Sequence[Feeds]) -> tuple[dict[str, np.ndarray], list[_Slot]]:
        slots = []
        offset = 0
        for feeds in jobs:
            rows = self.rows(feeds)
            sizes = self.dim_sizes(feeds)
            slots.append(_Slot(offset, rows, {d: s for d, s in sizes.items() if d in self.pad_dims}))
            offset += rows
        merged = {}
        for spec in self.inputs:
            arrays = [feeds[spec.name] for feeds in jobs]
            shape = (offset, *(max(a.shape[axis] for a in arrays) for axis in range(1, arrays[0].ndim)))
            batch = np.full(shape, self.pad_values.get(spec.name, 0), dtype=arrays[0].dtype)
            for array, slot in zip(arrays, slots, strict=True):
                batch[
                    (slice(slot.offset, slot.offset + slot.rows), *(slice(0, n) for n in array.shape[1:]))
                ] = array
            merged[spec.name] = batch
        return merged, slots

    def _split(self, outputs: Mapping[str, np.ndarray], slots: Sequence[_Slot]) -> list[Outputs]:
        pieces: list[Outputs] = [{} for _ in slots]
        for spec in self.outputs:
            array = outputs[spec.name]
            for piece, slot in zip(pieces, slots, strict=True):
                index = (
                    slice(slot.offset, slot.offset + slot.rows),
                    *(
                        slice(0, slot.sizes[d]) if isinstance(d, str) and d in slot.sizes else slice(None)
                        for d in spec.shape[1:]
                    ),
                )
                piece[spec.name] = np.ascontiguousarray(array[index])
        return pieces

    def _buckets(self, jobs: Sequence[Feeds], members: list[int]) -> list[list[int]]:
        """Split a group by padded size into the runs of least cost (`padding_groups`): on a CPU, where work grows
        with padded tokens, padding is paid only where it costs less than another run."""
        if not self.pad_dims or len(members) < 2:
            return [members]

        def size(index: int) -> int:
            sizes = self.dim_sizes(jobs[index])
            return math.prod(sizes[d] for d in self.pad_dims if d in sizes)

        groups = padding_groups([size(i) for i in members], [self.rows(jobs[i]) for i in members])
        return [[members[k] for k in group] for group in groups]

    def _run_one(self, feeds: Feeds) -> Outputs | BaseException:
        try:
            return self.runner.run(feeds)
        except Exception as exc:  # noqa: BLE001 - handed to the request's future and answered there
            return exc

    def run_many(self, jobs: Sequence[Feeds]) -> list[Outputs | BaseException]:
        """Run requests' feeds as few merged batches as their shapes allow; per request, outputs or the error."""
        results: list[Outputs | BaseException | None] = [None] * len(jobs)
        if not self.merge:
            return [self._run_one(feeds) for feeds in jobs]
        groups: dict[tuple[tuple[int, ...], ...], list[int]] = {}
        for index, feeds in enumerate(jobs):
            groups.setdefault(self._group_key(feeds), []).append(index)
        runs = [bucket for members in groups.values() for bucket in self._buckets(jobs, members)]
        for members in runs:
            if len(members) == 1:
                results[members[0]] = self._run_one(jobs[members[0]])
                continue
            try:
                merged, slots = self._merge([jobs[i] for i in members])
                pieces = self._split(self.runner.run(merged), slots)
            except EdgeError:
                # One bad request must not fail the others: run them one by one, each gets its own answer.
                for i in members:
                    results[i] = self._run_one(jobs[i])
                continue
            for i, piece in zip(members, pieces, strict=True):
                results[i] = piece
        return [r if r is not None else RuntimeError("request was not run") for r in results]


class ModelEngine(Protocol):
    """What a served model runs on, as the app and the scheduler see it: an ONNX `Engine`, or a decoding
    pipeline (`toolkit.serve.decoding.DecodeEngine`)."""

    name: str
    version: str
    runner: Runner
    batch_dim: str | None
    merge: bool
    inputs: tuple[TensorSpec, ...]
    requests_per_run: int | None

    @property
    def label(self) -> tuple[str, str]:
        """(model, version), for metrics and thread names."""
        ...

    def run_many(self, jobs: Sequence[Feeds]) -> list[Outputs | BaseException]:
        """Per request, outputs or the error."""
        ...
