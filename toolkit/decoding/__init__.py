"""The decoding engine of multi-step models: KV cache (`kv_cache`), the step loop and its `Stepper` protocol
(`loop`), sampling (`sampling`), grammar masks (`grammar`), the streaming detokenizer (`detokenizer`), the
decoder-only stepper (`decoder`) and step-level batching (`continuous`), the encoder-decoder stepper and beam search
(`encoder_decoder`). It knows no task: the pipelines that drive it live with their tasks (generate, transcribe,
text2text under the task registry), and a task's own logits rule (Whisper's timestamps) comes in as a
`LogitsRule`."""

from toolkit.decoding.continuous import BatchedGenerator, ContinuousBatch
from toolkit.decoding.decoder import DecoderStepper
from toolkit.decoding.detokenizer import IncrementalDetokenizer
from toolkit.decoding.encoder_decoder import (
    BeamSettings,
    DecodingRules,
    LogitsRule,
    Seq2SeqStepper,
    beam_search,
    checked_steps,
    log_softmax,
)
from toolkit.decoding.grammar import GrammarEngine, OutputConstraint, constraint_from
from toolkit.decoding.kv_cache import CacheLayout, KVCache
from toolkit.decoding.loop import (
    DecodeStep,
    FinishReason,
    Generation,
    GenerationEvent,
    GenerationTimings,
    RowPlan,
    RowWatcher,
    Stepper,
    TokenLogprob,
    decode,
)
from toolkit.decoding.sampling import GenerationOptions, LogitsChooser, options_from

__all__ = [
    "BatchedGenerator",
    "BeamSettings",
    "CacheLayout",
    "ContinuousBatch",
    "DecodeStep",
    "DecoderStepper",
    "DecodingRules",
    "FinishReason",
    "Generation",
    "GenerationEvent",
    "GenerationOptions",
    "GenerationTimings",
    "GrammarEngine",
    "IncrementalDetokenizer",
    "KVCache",
    "LogitsChooser",
    "LogitsRule",
    "OutputConstraint",
    "RowPlan",
    "RowWatcher",
    "Seq2SeqStepper",
    "Stepper",
    "TokenLogprob",
    "beam_search",
    "checked_steps",
    "constraint_from",
    "decode",
    "log_softmax",
    "options_from",
]
