"""Text generation: a decoder with its KV cache, the shared decoding loop, sampling, streaming detokenization
and chat templates. `TextGenerator` is the face; `decode`, `Stepper` and `KVCache` are what an encoder-decoder
generator (Whisper) reuses."""

from toolkit.generation.chat import render_chat
from toolkit.generation.decoding import DecodeStep, RowPlan, RowWatcher, Stepper, decode
from toolkit.generation.detokenizer import IncrementalDetokenizer
from toolkit.generation.generator import (
    GENERATE_TASK,
    Generation,
    GenerationEvent,
    GenerationTimings,
    TextGenerator,
    TextStream,
    TokenPrompt,
)
from toolkit.generation.kv_cache import CacheLayout, KVCache
from toolkit.generation.sampling import GenerationOptions, LogitsChooser, options_from

__all__ = [
    "GENERATE_TASK",
    "CacheLayout",
    "DecodeStep",
    "Generation",
    "GenerationEvent",
    "GenerationOptions",
    "GenerationTimings",
    "IncrementalDetokenizer",
    "KVCache",
    "LogitsChooser",
    "RowPlan",
    "RowWatcher",
    "Stepper",
    "TextGenerator",
    "TextStream",
    "TokenPrompt",
    "decode",
    "options_from",
    "render_chat",
]
