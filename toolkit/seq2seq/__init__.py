"""Encoder-decoder models: the decoder stepper, decoding rules and beam search (`decoding`), and
`Seq2SeqPipeline`, the base of `toolkit.SpeechRecognizer` and `toolkit.Seq2SeqGenerator`. Greedy decoding
reuses the text generator's loop (`toolkit.generation.decode`); Whisper's timestamp rule and window merging live in
`timestamps`."""

from toolkit.seq2seq.decoding import BeamSettings, DecodingRules, Seq2SeqStepper, beam_search, log_softmax
from toolkit.seq2seq.pipeline import DecodeLimits, Seq2SeqOutput, Seq2SeqPipeline, Seq2SeqTask
from toolkit.seq2seq.timestamps import TimestampRule

__all__ = [
    "BeamSettings",
    "DecodeLimits",
    "DecodingRules",
    "Seq2SeqOutput",
    "Seq2SeqPipeline",
    "Seq2SeqStepper",
    "Seq2SeqTask",
    "TimestampRule",
    "beam_search",
    "log_softmax",
]
