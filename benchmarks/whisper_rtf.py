"""Speech recognition benchmark: real-time factor of a whisper-tiny-shaped random model (d_model 384, 4 + 4
layers, 6 heads, 51865 tokens, 80 mel bins) on this CPU, for edge fp32, edge int8 (dynamic), transformers in
PyTorch eager mode (with its eager attention, and with sdpa attention, its default) and optimum-onnx's
ORTModelForSpeechSeq2Seq.

Run from the repo root:  python benchmarks/whisper_rtf.py [--out out/whisper-bench] [--seconds 10]
    [--new-tokens 32] [--rounds 3] [--threads 2]

Every backend transcribes the same speech-like clip from its waveform (its own front end included) with the
same English/transcribe prompt, greedily, and always the same number of new tokens (the end-of-text token is
suppressed in the random model's generation config). Rounds are interleaved; the figure is the median wall
time over the clip's duration (RTF; below 1 is faster than real time).
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

VOCAB = 51865
EOT, SOT, EN, TRANSLATE, TRANSCRIBE, NO_TIMESTAMPS = 50257, 50258, 50259, 50358, 50359, 50363
CONFIG = {
    "vocab_size": VOCAB,
    "d_model": 384,
    "encoder_layers": 4,
    "decoder_layers": 4,
    "encoder_attention_heads": 6,
    "decoder_attention_heads": 6,
    "encoder_ffn_dim": 1536,
    "decoder_ffn_dim": 1536,
    "num_mel_bins": 80,
    "max_source_positions": 1500,
    "max_target_positions": 448,
    "decoder_start_token_id": SOT,
    "eos_token_id": EOT,
    "pad_token_id": EOT,
    "bos_token_id": EOT,
}


EAGER = "transformers, eager attention"
SDPA = "transformers, sdpa attention (its default)"


def _build(folder: Path) -> int:
    """Save the random model, a word-level tokenizer over its whole vocabulary and its front-end config."""
    import torch
    from tokenizers import Tokenizer, models
    from transformers import (
        GenerationConfig,
        PreTrainedTokenizerFast,
        WhisperConfig,
        WhisperFeatureExtractor,
        WhisperForConditionalGeneration,
    )

    torch.manual_seed(0)
    model = WhisperForConditionalGeneration(WhisperConfig(**CONFIG)).eval()
    model.generation_config = GenerationConfig(
        decoder_start_token_id=SOT,
        eos_token_id=EOT,
        pad_token_id=EOT,
        suppress_tokens=[EOT],  # never stop: every backend decodes the same number of tokens
        lang_to_id={"<|en|>": EN},
        task_to_id={"transcribe": TRANSCRIBE, "translate": TRANSLATE},
        no_timestamps_token_id=NO_TIMESTAMPS,
        is_multilingual=True,
        max_length=448,
    )
    model.save_pretrained(folder)
    vocab = {f"w{i}": i for i in range(VOCAB)}
    for token, index in {"<|endoftext|>": EOT, "<|startoftranscript|>": SOT, "<|en|>": EN}.items():
        del vocab[f"w{index}"]
        vocab[token] = index
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="w0"))
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<|endoftext|>").save_pretrained(folder)
    WhisperFeatureExtractor(feature_size=80).save_pretrained(folder)
    return sum(p.numel() for p in model.parameters())


def main() -> None:
    """Build, convert, quantize, time every backend interleaved, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="out/whisper-bench")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    import numpy as np
    import torch
    from transformers import GenerationMixin, WhisperFeatureExtractor, WhisperForConditionalGeneration

    from converters import ConvertOptions, convert, quantize
    from toolkit import SpeechRecognizer
    from toolkit.host import current_host
    from toolkit.tasks.modality import synthetic_waveform

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    source, package_dir = out / "hf", out / "package"
    if not (source / "config.json").is_file():
        params = _build(source)
        print(f"built a whisper-tiny-shaped random model: {params / 1e6:.1f} M parameters")
    if not (package_dir / "edge.json").is_file():
        convert(str(source), package_dir, ConvertOptions())
    if not (package_dir / "model.int8.onnx").is_file():
        quantize(package_dir, "dynamic-int8")

    clip = (0.1 * synthetic_waveform(int(args.seconds * 16000), 16000, np.random.default_rng(0))).astype(
        np.float32
    )
    prompt = [SOT, EN, TRANSCRIBE, NO_TIMESTAMPS]
    n = args.new_tokens
    extractor = WhisperFeatureExtractor.from_pretrained(source)

    def edge(variant: str) -> Callable[[], list[int]]:
        recognizer = SpeechRecognizer.load(
            package_dir, variant=variant, providers="cpu", threads=args.threads
        )
        return lambda: list(recognizer.transcribe([clip], language="en", max_new_tokens=n)[0].token_ids)

    def hf_generate(model: object) -> Callable[[], list[int]]:
        def run() -> list[int]:
            features = extractor(clip, sampling_rate=16000, return_tensors="pt").input_features
            with torch.inference_mode():
                ids = GenerationMixin.generate(
                    model,  # type: ignore[arg-type]
                    input_features=features,
                    decoder_input_ids=torch.tensor([prompt]),
                    do_sample=False,
                    max_new_tokens=n,
                    min_new_tokens=n,
                )
            return [int(t) for t in ids[0, len(prompt) :]]

        return run

    def torch_model(attention: str) -> object:
        return WhisperForConditionalGeneration.from_pretrained(source, attn_implementation=attention).eval()

    backends: dict[str, Callable[[], list[int]]] = {
        "edge fp32": edge("fp32"),
        "edge int8": edge("int8"),
        EAGER: hf_generate(torch_model("eager")),
        SDPA: hf_generate(torch_model("sdpa")),
    }
    try:
        import onnxruntime as ort
        from optimum.onnxruntime import ORTModelForSpeechSeq2Seq

        options = ort.SessionOptions()
        options.intra_op_num_threads = args.threads
        ort_model = ORTModelForSpeechSeq2Seq.from_pretrained(
            source, export=True, provider="CPUExecutionProvider", session_options=options
        )
        backends["optimum ORTModelForSpeechSeq2Seq"] = hf_generate(ort_model)
    except Exception as exc:  # noqa: BLE001 - the benchmark goes on without that backend, saying why
        print(f"optimum ORTModelForSpeechSeq2Seq skipped: {type(exc).__name__}: {exc}")
    lengths = {name: len(run()) for name, run in backends.items()}  # warm-up, and every one decodes n tokens
    print(f"tokens decoded per run: {lengths}")
    times: dict[str, list[float]] = {name: [] for name in backends}
    for _ in range(args.rounds):
        for name, run in backends.items():
            started = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - started)
    eager, sdpa = statistics.median(times[EAGER]), statistics.median(times[SDPA])
    print(
        f"\n{args.seconds:.0f} s clip, {n} new tokens, greedy, {args.threads} threads, median of {args.rounds} "
        f"rounds, on {current_host().describe()}"
    )
    print(f"{'backend':42} {'seconds':>8} {'RTF':>7} {'vs eager':>9} {'vs sdpa':>8}")
    for name, values in times.items():
        median = statistics.median(values)
        print(
            f"{name:42} {median:8.3f} {median / args.seconds:7.4f} {eager / median:8.2f}x {sdpa / median:7.2f}x"
        )


if __name__ == "__main__":
    main()
