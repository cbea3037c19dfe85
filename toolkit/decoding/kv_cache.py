"""The KV cache: buffers allocated once per generation, bound to the session with IO binding.

A decoder exported with its past reads ``past[batch, kv_heads, n, head_dim]`` and writes
``present[batch, kv_heads, n + new, head_dim]``. Each layer's key and value get two flat buffers sized for the
whole generation: a step reads the past from one and onnxruntime writes the present straight into the other,
then they swap. Nothing is allocated or copied by us per token; the only copy is the graph's own concat of
past and new. On CUDA the buffers are device memory, so the cache never crosses to the host.

An in-place layout (edge-toolkit's GroupQueryAttention graph) has one buffer per entry, shaped
``[batch, kv_heads, capacity, head_dim]`` and bound as both past and present: the graph writes each step's new
positions into it and copies nothing else.

Encoder-decoders (Whisper) use the same class for their decoder self-attention cache.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import onnxruntime as ort

from toolkit.errors import BadInputError

__all__ = ["CacheLayout", "KVCache"]

Namer = Callable[[int, str], str]


class CacheLayout:
    """Layers, heads, head size and dtype of a cache, and how its graph inputs and outputs are named."""

    def __init__(
        self,
        layers: int,
        kv_heads: int,
        head_dim: int,
        dtype: str,
        past_name: Namer,
        present_name: Namer,
        in_place: bool = False,
        rotary_inv_freq: Sequence[float] = (),
    ) -> None:
        self.in_place = in_place
        # keys rotated by cache column inside the graph: moving them by d columns rotates them by d more
        self.rotary_inv_freq = np.asarray(rotary_inv_freq, dtype=np.float64)
        self.layers = layers
        self.kv_heads = kv_heads
        self.head_dim = head_dim
        self.dtype = np.dtype(dtype)
        self.past_name = past_name
        self.present_name = present_name

    def entries(self) -> list[tuple[str, str]]:
        """(past input, present output) names, layer by layer, key then value."""
        return [
            (self.past_name(layer, kind), self.present_name(layer, kind))
            for layer in range(self.layers)
            for kind in ("key", "value")
        ]


class KVCache:
    """Ping-pong cache buffers for `batch` rows of up to `capacity` positions on `device` (cpu or cuda)."""

    def __init__(
        self, layout: CacheLayout, batch: int, capacity: int, device: str = "cpu", device_id: int = 0
    ) -> None:
        if device not in ("cpu", "cuda"):
            raise BadInputError(f"KV cache device must be cpu or cuda, got {device!r}")
        self.layout = layout
        self.batch = batch
        self.capacity = capacity
        self.device = device
        self.device_id = device_id
        self.length = 0
        size = batch * layout.kv_heads * capacity * layout.head_dim
        self._buffers: list[list[tuple[int, object]]] = [
            [self._allocate(size) for _ in layout.entries()] for _ in range(1 if layout.in_place else 2)
        ]
        self._current = 0

    def _allocate(self, size: int) -> tuple[int, object]:
        """(address, owner): a numpy array on CPU, an OrtValue in device memory on CUDA."""
        if self.device == "cpu":
            array = np.zeros(size, dtype=self.layout.dtype)
            return array.ctypes.data, array
        value = ort.OrtValue.ortvalue_from_shape_and_type([size], self.layout.dtype, "cuda", self.device_id)
        return value.data_ptr(), value

    def shape(self, length: int) -> list[int]:
        """The cache tensor shape at `length` positions."""
        return [self.batch, self.layout.kv_heads, length, self.layout.head_dim]

    def addresses(self) -> list[tuple[int, int]]:
        """(address, bytes) of every buffer: what a test checks to see the cache is never reallocated."""
        item = self.layout.dtype.itemsize
        return [
            (address, int(np.prod(self.shape(self.capacity))) * item)
            for side in self._buffers
            for address, _ in side
        ]

    def bind(self, binding: ort.IOBinding, new_tokens: int) -> None:
        """Bind the past (current length) as inputs and the present (length + `new_tokens`) as outputs."""
        self.check_room(new_tokens)
        if self.layout.in_place:
            for (past_name, present_name), (address, _) in zip(
                self.layout.entries(), self._buffers[0], strict=True
            ):
                for bind, name in ((binding.bind_input, past_name), (binding.bind_output, present_name)):
                    bind(
                        name,
                        self.device,
                        self.device_id,
                        self.layout.dtype,
                        self.shape(self.capacity),
                        address,
                    )
            return
        past, present = self._buffers[self._current], self._buffers[1 - self._current]
        for (past_name, present_name), (src, _), (dst, _) in zip(
            self.layout.entries(), past, present, strict=True
        ):
            binding.bind_input(
                past_name, self.device, self.device_id, self.layout.dtype, self.shape(self.length), src
            )
            binding.bind_output(
                present_name,
                self.device,
                self.device_id,
                self.layout.dtype,
                self.shape(self.length + new_tokens),
                dst,
            )

    def check_room(self, new_tokens: int) -> None:
        """A BadInputError when a step of `new_tokens` would not fit the capacity."""
        if self.length + new_tokens > self.capacity:
            raise BadInputError(
                f"KV cache holds {self.capacity} positions, a step needs {self.length + new_tokens}; "
                "lower max_new_tokens or the prompt length"
            )

    def advance(self, new_tokens: int) -> None:
        """After a run: the present becomes the next step's past."""
        self.length += new_tokens
        self._current = (self._current + 1) % len(self._buffers)

    @classmethod
    def assemble(cls, rows: Sequence[tuple[KVCache, int, int]], length: int, capacity: int) -> KVCache:
        """A new cache of the given rows (cache, row index, first column kept) with each row's kept columns
        right-aligned at `length` (shorter rows padded on the left, which their attention masks must hide): rows
        joining or leaving a running left-padded batch. Keys of a graph that rotates by column are rotated by the
        columns they move. Copies every row once (through the host on CUDA)."""
        layout = rows[0][0].layout

        def place(name: str, data: np.ndarray, start: int) -> tuple[int, np.ndarray]:
            offset = length - data.shape[1]
            if name == "key" and layout.rotary_inv_freq.size and offset != start:
                data = _rotate(data, offset - start, layout.rotary_inv_freq)
            return offset, data

        return cls._copy_rows([(c, i, slice(start, None)) for c, i, start in rows], length, capacity, place)

    @classmethod
    def gather(cls, rows: Sequence[tuple[KVCache, int, int]], capacity: int) -> KVCache:
        """A new cache of the given rows (cache, row index, columns used), each row's columns from column 0 (a
        graph that takes each row's length): rows joining or leaving a running batch. Copies every row once."""
        return cls._copy_rows(
            [(c, i, slice(0, used)) for c, i, used in rows],
            max(used for _, _, used in rows),
            capacity,
            lambda name, data, start: (0, data),
        )

    @classmethod
    def _copy_rows(
        cls,
        rows: Sequence[tuple[KVCache, int, slice]],
        length: int,
        capacity: int,
        place: Callable[[str, np.ndarray, int], tuple[int, np.ndarray]],
    ) -> KVCache:
        """A new cache of `length` positions holding each row's `columns`, put where `place` says (its first
        column, and the data to write there)."""
        first = rows[0][0]
        layout = first.layout
        new = cls(layout, len(rows), capacity, first.device, first.device_id)
        new.length = length
        shape = new.shape(length)
        for entry in range(len(layout.entries())):
            layer, kind = divmod(entry, 2)
            name = "value" if kind else "key"
            target = np.zeros(shape, dtype=layout.dtype)
            sources: dict[int, np.ndarray] = {}
            for row, (cache, index, columns) in enumerate(rows):
                if id(cache) not in sources:
                    sources[id(cache)] = cache.view(layer, name)
                offset, data = place(name, sources[id(cache)][index][:, columns], columns.start or 0)
                target[row, :, offset : offset + data.shape[1], :] = data
            new._write_prefix(entry, target)
        return new

    def fill(self, values: Sequence[np.ndarray]) -> None:
        """Start the cache from host tensors [batch, kv_heads, length, head_dim], one per entry (layer by layer,
        key then value): a prompt's past computed elsewhere (an encoder-decoder's first decoder run)."""
        length = values[0].shape[2]
        if length > self.capacity:
            raise BadInputError(
                f"KV cache holds {self.capacity} positions, the prompt needs {length}; use a shorter prompt"
            )
        self.length = length
        for entry, value in enumerate(values):
            self._write_prefix(entry, np.ascontiguousarray(value, dtype=self.layout.dtype))

    def reorder(self, rows: Sequence[int] | np.ndarray) -> None:
        """Keep rows `rows` (in that order; as many as the cache has) in place: beam search regrouping its beams.
        On CUDA through the host."""
        rows = np.asarray(rows)
        if rows.shape != (self.batch,):
            raise BadInputError(f"a reorder keeps {self.batch} rows, got {rows.shape[0]}")
        for entry in range(len(self.layout.entries())):
            layer, kind = divmod(entry, 2)
            self._write_prefix(entry, self.view(layer, "value" if kind else "key")[rows])

    def _write_prefix(self, entry: int, data: np.ndarray) -> None:
        """Write `data` (the cache tensor at the current length) to the start of the current side's buffer."""
        _, owner = self._buffers[self._current][entry]
        length = data.shape[2]
        if isinstance(owner, np.ndarray):
            if self.layout.in_place:
                owner.reshape(self.shape(self.capacity))[:, :, :length] = data
            else:
                owner[: data.size] = data.reshape(-1)
            return
        host = np.zeros(int(np.prod(self.shape(self.capacity))), self.layout.dtype)
        if self.layout.in_place:
            host.reshape(self.shape(self.capacity))[:, :, :length] = data
        else:
            host[: data.size] = data.reshape(-1)
        self._write(entry, host)

    def _write(self, entry: int, host: np.ndarray) -> None:
        """Fill the current side's buffer `entry` from a host array of its full size."""
        _, owner = self._buffers[self._current][entry]
        if isinstance(owner, np.ndarray):
            owner[:] = host
        else:
            assert isinstance(owner, ort.OrtValue)
            owner.update_inplace(host)

    def view(self, layer: int, kind: str) -> np.ndarray:
        """A copy of one cache tensor on the host (for tests and debugging)."""
        index = 2 * layer + (kind == "value")
        _, owner = self._buffers[self._current][index]
        if isinstance(owner, np.ndarray):
            flat = owner
        else:
            assert isinstance(owner, ort.OrtValue)
            flat = owner.numpy()
        if self.layout.in_place:
            return flat.reshape(self.shape(self.capacity))[:, :, : self.length].copy()
        count = int(np.prod(self.shape(self.length)))
        return flat[:count].reshape(self.shape(self.length)).copy()


def _rotate(keys: np.ndarray, shift: int, inv_freq: np.ndarray) -> np.ndarray:
    """`keys` [heads, positions, head_dim] (rotary applied to halves, not interleaved) rotated `shift` positions
    further: a rotation by angle p composed with one by angle shift is the rotation by p + shift."""
    angle = shift * inv_freq
    cos, sin = np.cos(angle), np.sin(angle)
    half = inv_freq.size
    x1, x2 = keys[..., :half].astype(np.float64), keys[..., half : 2 * half].astype(np.float64)
    out = keys.copy()
    out[..., :half] = x1 * cos - x2 * sin
    out[..., half : 2 * half] = x2 * cos + x1 * sin
    return out
