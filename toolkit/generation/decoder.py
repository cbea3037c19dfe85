"""A decoder-only LM as a `Stepper`: one onnxruntime session, the KV cache bound in place, left-padded rows."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort

from toolkit.errors import BadModelError
from toolkit.generation.kv_cache import CacheLayout, KVCache
from toolkit.manifest import GenerationSpec

# the in-place graph's input saying how many trailing positions get logits (converters/gqa_decoder.py)
LOGITS_TO_KEEP = "num_logits_to_keep"

__all__ = ["LOGITS_TO_KEEP", "DecoderStepper", "cache_layout"]


def cache_layout(spec: GenerationSpec) -> CacheLayout:
    """The cache layout a package's generation contract describes."""
    return CacheLayout(
        spec.layers,
        spec.kv_heads,
        spec.head_dim,
        spec.cache_dtype,
        lambda layer, kind: spec.past_input.format(layer=layer, kind=kind),
        lambda layer, kind: spec.present_output.format(layer=layer, kind=kind),
        spec.in_place,
        spec.rotary_inv_freq,
    )


class DecoderStepper:
    """Runs the prompt of a left-padded batch, then one token per row per step, through IO binding."""

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
        self.cache = KVCache(cache_layout(spec), batch, capacity, device, device_id)
        self._mask = np.zeros((batch, capacity), dtype=np.int64)
        self._mask[:, :prompt] = attention_mask
        # logits come back to the host: room for the prompt's positions once (the last one only from an
        # in-place graph, which computes no others), then one per step
        self._logits = np.empty(
            batch * (1 if spec.in_place else prompt) * self.vocab, dtype=self._logits_dtype
        )
        self.logits = self._run(input_ids, self._positions(prompt))

    @classmethod
    def resume(
        cls, session: ort.InferenceSession, spec: GenerationSpec, cache: KVCache, mask: np.ndarray
    ) -> DecoderStepper:
        """A stepper over a cache that already holds the rows' past (rows regrouped between steps); its
        `mask` is [batch, capacity] with the first ``cache.length`` columns filled."""
        self = cls.__new__(cls)
        self._setup(session, spec, cache.device, cache.device_id)
        self.cache = cache
        self._mask = mask
        self._logits = np.empty(cache.batch * self.vocab, dtype=self._logits_dtype)
        return self

    def _setup(
        self, session: ort.InferenceSession, spec: GenerationSpec, device: str, device_id: int
    ) -> None:
        self.session = session
        self.spec = spec
        names = {i.name for i in session.get_inputs()}
        missing = [past for past, _ in cache_layout(spec).entries() if past not in names]
        if missing or "input_ids" not in names:
            raise BadModelError(
                f"the package's generation contract does not match its graph: input "
                f"{(missing or ['input_ids'])[0]!r} is missing; re-create the package with `edge convert`"
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
        self._logits_dtype = np.dtype(
            np.float16 if "float16" in session.get_outputs()[0].type else np.float32
        )
        self._keep_last = np.ones((), dtype=np.int64)
        self._bound = False

    @property
    def mask(self) -> np.ndarray:
        """The attention mask [batch, capacity]; the first ``cache.length`` columns are in use."""
        return self._mask

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
        self._mask[:, self.cache.length] = 1
        return self._run(tokens.reshape(-1, 1), self._positions(1))
