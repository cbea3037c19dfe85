"""A decoder-only LM as a `Stepper`: one onnxruntime session, the KV cache bound in place.

Two ways to hold rows of different lengths, chosen by the package's graph (`GenerationSpec.row_lengths`):
- each row's own length (edge-toolkit's ``gqa-seqlens`` graph): rows start at cache column 0 and the graph takes
  ``seqlens_k`` / ``total_sequence_length``; no mask, no padding once decoding. A step's inputs (tokens, lengths)
  are arrays bound once and rewritten in place, so a step binds nothing;
- left padding and an attention mask (optimum-onnx's graph, and ``gqa-inplace`` packages made before): every row
  writes the same columns and the mask hides each row's padding.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import onnxruntime as ort

from toolkit.decoding.kv_cache import CacheLayout, KVCache
from toolkit.errors import BadModelError
from toolkit.manifest import GenerationSpec
from toolkit.runner import numpy_dtype

# the in-place graph's inputs (converters/gqa_decoder.py): how many trailing positions get logits, each row's
# length minus one, and the longest row's length
LOGITS_TO_KEEP = "num_logits_to_keep"
SEQLENS = "seqlens_k"
TOTAL_LENGTH = "total_sequence_length"

# prompt positions run at once on the CPU (graphs that take each row's length): a longer prompt runs in pieces, so
# onnxruntime holds the activations of this many positions, not the whole prompt's (the 100M Llama's peak RSS at a
# 512-token prompt: 229 MB whole, 196 MB in pieces of 128, time to first token the same); on a GPU a prompt runs at
# once (there 128 positions took 2.09 ms and 512 took 2.42 on an H200: pieces would cost ~3x the time to first
# token). A prompt joining a running batch (ContinuousBatch) delays the running rows' next tokens by one piece per
# step, not its whole prefill, on either device.
PREFILL_CHUNK = 128

__all__ = [
    "LOGITS_TO_KEEP",
    "PREFILL_CHUNK",
    "SEQLENS",
    "TOTAL_LENGTH",
    "DecoderStepper",
    "cache_layout",
    "graph_cache_dtype",
    "row_length_feeds",
]


def graph_cache_dtype(spec: GenerationSpec, input_dtypes: Mapping[str, str]) -> str:
    """The KV cache's element type in a graph whose inputs have `input_dtypes` (name: numpy dtype name): its
    first past input's, which a variant's graph may hold in another type than the contract's (an fp16
    variant's is float16); the contract's when the graph has no such input."""
    return input_dtypes.get(spec.past_input.format(layer=0, kind="key"), spec.cache_dtype)


def cache_layout(spec: GenerationSpec, dtype: str | None = None) -> CacheLayout:
    """The cache layout a package's generation contract describes, its buffers of `dtype` (default: the
    contract's; a variant's graph may hold its cache in another, its fp16 variant in float16)."""
    return CacheLayout(
        spec.layers,
        spec.kv_heads,
        spec.head_dim,
        dtype or spec.cache_dtype,
        lambda layer, kind: spec.past_input.format(layer=layer, kind=kind),
        lambda layer, kind: spec.present_output.format(layer=layer, kind=kind),
        spec.in_place,
        () if spec.row_lengths else spec.rotary_inv_freq,
    )


def row_length_feeds(lengths: Sequence[int] | np.ndarray) -> dict[str, np.ndarray]:
    """The ``gqa-seqlens`` graph's length inputs for rows of `lengths` positions (this run's new ones included)."""
    lengths = np.asarray(lengths, dtype=np.int32)
    return {SEQLENS: lengths - 1, TOTAL_LENGTH: np.asarray(lengths.max(), dtype=np.int32)}


class DecoderStepper:
    """Runs the prompt of a batch (given left-padded, with its mask), then one token per row per step, through IO
    binding."""

    _prompt: np.ndarray  # a chunked stepper's prompt ids

    def __init__(
        self,
        session: ort.InferenceSession,
        spec: GenerationSpec,
        input_ids: np.ndarray,
        attention_mask: np.ndarray,
        capacity: int,
        device: str = "cpu",
        device_id: int = 0,
    ) -> None:
        self._setup(session, spec, device, device_id)
        batch, prompt = input_ids.shape
        self.cache = KVCache(self._layout, batch, capacity, device, device_id)
        if spec.row_lengths:
            self.logits = self._prefill_rows(input_ids, attention_mask)
            return
        self._mask = np.zeros((batch, capacity), dtype=np.int64)
        self._mask[:, :prompt] = attention_mask
        # logits come back to the host: room for the prompt's positions once (the last one only from an
        # in-place graph, which computes no others), then one per step
        self._logits = np.empty(
            batch * (1 if spec.in_place else prompt) * self.vocab, dtype=self._logits_dtype
        )
        self.logits = self._run(input_ids, self._positions(prompt))

    @classmethod
    def regroup(
        cls,
        session: ort.InferenceSession,
        spec: GenerationSpec,
        sources: Sequence[tuple[DecoderStepper, int]],
        room: Sequence[int],
    ) -> DecoderStepper:
        """A stepper over rows taken from other steppers (`sources[i]` = (stepper, row index)), row i with
        `room[i]` more positions: rows joining or leaving a running batch. Copies each row's cache once."""
        if spec.row_lengths:
            lengths = [int(stepper._lengths[index]) for stepper, index in sources]
            capacity = max(n + extra for n, extra in zip(lengths, room, strict=True))
            cache = KVCache.gather(
                [(s.cache, index, n) for (s, index), n in zip(sources, lengths, strict=True)], capacity
            )
            return cls._resume(session, spec, cache, np.asarray(lengths, dtype=np.int32))
        # left-padded rows keep their columns from their first real token: columns padded in every row are
        # dropped, so a long-running batch does not grow past the positions its rows use
        parts = [(s.cache, index, int(np.argmax(s._mask[index, : s.cache.length]))) for s, index in sources]
        length = max(cache.length - start for cache, _, start in parts)
        capacity = length + max(room)  # columns; positions count real tokens only
        cache = KVCache.assemble(parts, length, capacity)
        mask = np.zeros((len(sources), capacity), dtype=np.int64)
        for target, ((stepper, index), (_, _, start)) in enumerate(zip(sources, parts, strict=True)):
            used = stepper.cache.length
            mask[target, length - (used - start) : length] = stepper._mask[index, start:used]
        return cls._resume(session, spec, cache, mask)

    @classmethod
    def _resume(
        cls, session: ort.InferenceSession, spec: GenerationSpec, cache: KVCache, rows: np.ndarray
    ) -> DecoderStepper:
        """A stepper over a cache that already holds the rows' past; `rows` is each row's length (row-length
        graphs) or the [batch, capacity] mask with the first ``cache.length`` columns filled."""
        self = cls.__new__(cls)
        self._setup(session, spec, cache.device, cache.device_id)
        self.cache = cache
        if spec.row_lengths:
            self._lengths = rows
        else:
            self._mask = rows
        self._logits = np.empty(cache.batch * self.vocab, dtype=self._logits_dtype)
        return self

    def _setup(
        self, session: ort.InferenceSession, spec: GenerationSpec, device: str, device_id: int
    ) -> None:
        self.session = session
        self.spec = spec
        types = {i.name: i.type for i in session.get_inputs()}
        names = set(types)
        layout = cache_layout(spec)
        wanted = [past for past, _ in layout.entries()] + ["input_ids"]
        if spec.row_lengths:
            wanted += [SEQLENS, TOTAL_LENGTH, LOGITS_TO_KEEP]
        missing = [name for name in wanted if name not in names]
        if missing:
            raise BadModelError(
                f"the package's generation contract does not match its graph: input {missing[0]!r} is "
                "missing; re-create the package with `edge convert`"
            )
        first_past = layout.entries()[0][0]
        self._layout = cache_layout(
            spec, graph_cache_dtype(spec, {first_past: numpy_dtype(types[first_past])})
        )
        self._position_ids = "position_ids" in names
        self._attention = "attention_mask" in names
        self.binding = session.io_binding()
        self._device = device
        self._device_id = device_id
        vocab = session.get_outputs()[0].shape[-1]
        if not isinstance(vocab, int):
            raise BadModelError("the decoder's logits have no fixed vocabulary size; re-export the model")
        self.vocab = vocab
        self._logits_dtype = np.dtype(numpy_dtype(session.get_outputs()[0].type))
        self._keep_last = np.ones((), dtype=np.int64)
        self._bound = False

    # -- rows by their own length (gqa-seqlens) ---------------------------------------------------------

    @classmethod
    def chunked(
        cls,
        session: ort.InferenceSession,
        spec: GenerationSpec,
        input_ids: np.ndarray,
        capacity: int,
        device: str = "cpu",
        device_id: int = 0,
    ) -> DecoderStepper:
        """A stepper whose prompt (rows of equal length) has not run yet: `prefill` runs it a piece at a time,
        so a long prompt joining a running batch costs each of the batch's steps one piece (row-length graphs)."""
        self = cls.__new__(cls)
        self._setup(session, spec, device, device_id)
        self.cache = KVCache(self._layout, input_ids.shape[0], capacity, device, device_id)
        self._prompt = np.ascontiguousarray(input_ids, dtype=np.int64)
        self._lengths = np.zeros(input_ids.shape[0], dtype=np.int32)
        self._logits = np.empty(input_ids.shape[0] * self.vocab, dtype=self._logits_dtype)
        return self

    def prefill(self, tokens: int) -> bool:
        """Run the next `tokens` positions of a `chunked` stepper's prompt; True once all have run (`logits`
        then holds the last position's)."""
        done = self.cache.length
        piece = self._prompt[:, done : done + tokens]
        logits = self._run_prompt(piece, np.full(piece.shape[0], done + piece.shape[1], dtype=np.int32), 1)
        if self.cache.length < self._prompt.shape[1]:
            return False
        self.logits = logits[:, 0]
        return True

    def _prefill_rows(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        """Run the prompt with each row's real tokens moved to column 0 (right-padded); the last real
        position's logits per row."""
        batch, prompt = input_ids.shape
        real = attention_mask.astype(bool)
        lengths = real.sum(axis=1).astype(np.int32)
        ragged = bool((lengths != prompt).any())
        if ragged:
            ids = np.full_like(input_ids, self.spec.pad_token_id)
            for row in range(batch):
                ids[row, : lengths[row]] = input_ids[row][real[row]]
        else:
            ids = input_ids
        self._logits = np.empty(batch * self.vocab, dtype=self._logits_dtype)  # the steps'
        if ragged:  # logits at every position, each row picking its last real one
            logits = self._run_prompt(ids, lengths, prompt)
            return np.asarray(logits[np.arange(batch), lengths - 1])
        # equal rows need the last position only, and on the CPU run in pieces of PREFILL_CHUNK
        self._prompt = np.ascontiguousarray(ids, dtype=np.int64)
        piece = PREFILL_CHUNK if self._device == "cpu" else prompt
        while not self.prefill(piece):
            continue
        return self.logits

    def _run_prompt(self, ids: np.ndarray, lengths: np.ndarray, kept: int) -> np.ndarray:
        """Run prompt positions `ids` (columns after the cache's) with rows reaching `lengths`; logits of the
        last `kept` positions [batch, kept, vocab] as float32. The next step binds its own inputs again."""
        batch, new = ids.shape
        logits = np.empty((batch, kept, self.vocab), dtype=self._logits_dtype)
        binding = self.binding
        binding.bind_cpu_input("input_ids", np.ascontiguousarray(ids, dtype=np.int64))
        for name, value in row_length_feeds(lengths).items():
            binding.bind_cpu_input(name, value)
        binding.bind_cpu_input(LOGITS_TO_KEEP, np.asarray(kept, dtype=np.int64))
        self.cache.bind(binding, new)
        binding.bind_output("logits", "cpu", 0, self._logits_dtype, list(logits.shape), logits.ctypes.data)
        self.session.run_with_iobinding(binding)
        self.cache.advance(new)
        self._lengths = lengths
        self._bound = False
        return logits.astype(np.float32)

    def _bind_steps(self) -> None:
        """Bind a step's inputs and outputs once: host arrays rewritten in place before every run."""
        batch = self.cache.batch
        self._tokens = np.zeros((batch, 1), dtype=np.int64)
        self._total = np.zeros((), dtype=np.int32)
        binding = self.binding
        for name, array in (
            ("input_ids", self._tokens),
            (SEQLENS, self._lengths),
            (TOTAL_LENGTH, self._total),
            (LOGITS_TO_KEEP, self._keep_last),
        ):
            binding.bind_input(name, "cpu", 0, array.dtype, list(array.shape), array.ctypes.data)
        self.cache.bind(binding, 1)
        binding.bind_output(
            "logits", "cpu", 0, self._logits_dtype, [batch, 1, self.vocab], self._logits.ctypes.data
        )
        self._bound = True

    def _step_rows(self, tokens: np.ndarray) -> np.ndarray:
        if not self._bound:
            self._bind_steps()
        self.cache.check_room(1)
        self._tokens[:, 0] = tokens
        # seqlens_k is each row's length before this token (the bound lengths), the total the longest after it
        self._total[...] = self.cache.length + 1
        if self._device != "cpu":
            # onnxruntime copies a bound host input to the device of the kernel reading it when it is bound, so
            # rewriting the host array would leave that copy stale: the step's three small inputs are bound again
            # (the cache and the logits stay bound)
            for name, array in (
                ("input_ids", self._tokens),
                (SEQLENS, self._lengths),
                (TOTAL_LENGTH, self._total),
            ):
                self.binding.bind_cpu_input(name, array)
        self.session.run_with_iobinding(self.binding)
        self._lengths += 1
        self.cache.advance(1)
        return self._logits.reshape(self.cache.batch, self.vocab).astype(np.float32)

    # -- left-padded rows with an attention mask -------------------------------------------------------

    def _positions(self, new: int) -> np.ndarray:
        """Position ids of the last `new` positions, counted over each row's real (unpadded) tokens."""
        length = self.cache.length + new
        mask = self._mask[:, :length]
        positions = np.cumsum(mask, axis=-1) - 1
        positions[mask == 0] = 1
        return np.ascontiguousarray(positions[:, -new:])

    def _run(self, input_ids: np.ndarray, positions: np.ndarray) -> np.ndarray:
        batch, new = input_ids.shape
        binding = self.binding
        binding.bind_cpu_input("input_ids", np.ascontiguousarray(input_ids, dtype=np.int64))
        if self._attention:
            binding.bind_cpu_input(
                "attention_mask", np.ascontiguousarray(self._mask[:, : self.cache.length + new])
            )
        if self._position_ids:
            binding.bind_cpu_input("position_ids", positions)
        kept = 1 if self.spec.in_place else new
        logits = self._logits[: batch * kept * self.vocab]
        # the in-place graph's cache, kept-logits count and logits buffer never change address or shape: bound
        # once (rebinding ~50 names costs more per token than some of the graph's kernels)
        if not (self.spec.in_place and self._bound):
            self.cache.bind(binding, new)
            if self.spec.in_place:
                binding.bind_cpu_input(LOGITS_TO_KEEP, self._keep_last)
            binding.bind_output(
                "logits", "cpu", 0, self._logits_dtype, [batch, kept, self.vocab], logits.ctypes.data
            )
            self._bound = True
        else:
            self.cache.check_room(new)
        self.session.run_with_iobinding(binding)
        self.cache.advance(new)
        return logits.reshape(batch, kept, self.vocab)[:, -1, :].astype(np.float32)

    def step(self, tokens: np.ndarray) -> np.ndarray:
        """Feed one token per row; returns the next logits [batch, vocab]."""
        if self.spec.row_lengths:
            return self._step_rows(tokens)
        self._mask[:, self.cache.length] = 1
        return self._run(tokens.reshape(-1, 1), self._positions(1))
