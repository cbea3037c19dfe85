"""Whisper's timestamp rule, timestamped decoding and long clips in strided windows, against transformers 4.57:
``WhisperTimeStampLogitsProcessor``, ``WhisperForConditionalGeneration.generate(..., return_timestamps=True)``
greedy and with 4 beams, and the ASR pipeline (``chunk_length_s=30``) on the same waveform. The model is a tiny
random Whisper with Whisper's 1501 timestamp tokens and a ``WhisperTokenizerFast`` (fixture
``whisper_ts_source``), built from objects, no hub."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from tests.seq2seq_models import speech, write_wav
from toolkit.cli import edge
from toolkit.errors import BadInputError, BadModelError
from toolkit.manifest import ModelPackage
from toolkit.speech import LogMelSpec, windows
from toolkit.tasks.transcribe.timestamps import TimestampRule, longest_common_sequence

NEW_TOKENS = 30  # the tiny model has 64 decoder positions


def _histories(
    rng: np.random.Generator, rows: int, length: int, begin_index: int, no_ts: int, vocab: int
) -> Any:
    """Decoder ids [rows, length]: a prompt, then text, lone timestamps and timestamp pairs mixed."""
    ids = rng.integers(0, no_ts, size=(rows, length))
    for row in range(rows):
        for col in range(begin_index, length):
            if rng.random() < 0.5:
                ids[row, col] = rng.integers(no_ts + 1, vocab)
    return ids


def test_timestamp_rule_equals_transformers_processor_on_logits_and_log_probs() -> None:
    import torch
    from transformers import GenerationConfig
    from transformers.generation.logits_process import WhisperTimeStampLogitsProcessor

    from toolkit.decoding import log_softmax

    rng = np.random.default_rng(0)
    vocab, no_ts, eos = 120, 60, 50
    masked_text_later = 0
    for begin_index in (1, 3):
        for initial in (None, 4):
            config = GenerationConfig(
                no_timestamps_token_id=no_ts, eos_token_id=eos, max_initial_timestamp_index=initial
            )
            processor = WhisperTimeStampLogitsProcessor(config, begin_index=begin_index)
            rule = TimestampRule(no_ts, eos, begin_index, initial)
            for length in range(begin_index, begin_index + 6):
                ids = _histories(rng, 16, length, begin_index, no_ts, vocab)
                scores = rng.normal(scale=3.0, size=(16, vocab)).astype(np.float32)
                scores[::2, no_ts + 1 :] += 2.5  # timestamps likely on even rows: their summed mass wins
                want = processor(torch.from_numpy(ids), torch.from_numpy(scores.copy())).numpy()
                for given in (scores, log_softmax(scores)):  # raw logits (greedy) or log-probs (beams)
                    got = rule(ids, given)
                    np.testing.assert_array_equal(np.isneginf(got), np.isneginf(want))
                    np.testing.assert_array_equal(got.argmax(-1), want.argmax(-1))
                np.testing.assert_allclose(rule(ids, scores)[np.isfinite(want)], want[np.isfinite(want)])
                if length > begin_index:
                    masked_text_later += int(np.isneginf(want[:, :eos]).all(axis=1).sum())
    assert masked_text_later > 0  # the branches that forbid text were reached


def test_windows_are_the_pipeline_chunk_iter() -> None:
    from transformers.pipelines.automatic_speech_recognition import chunk_iter

    class Samples:
        """chunk_iter's feature extractor, reduced to handing the samples through."""

        sampling_rate = 16000

        def __call__(self, chunk: np.ndarray, **kwargs: Any) -> dict[str, np.ndarray]:
            return {"samples": chunk}

    spec = LogMelSpec()
    for seconds in (0.5, 29.0, 30.0, 30.01, 52.0, 65.0, 97.3):
        wave = np.arange(int(seconds * 16000), dtype=np.float32)
        for stride_s in (None, 0.0, 2.5):
            stride = round((30 / 6 if stride_s is None else stride_s) * 16000)
            want = [
                (item["samples"], item["stride"])
                for item in chunk_iter(wave, Samples(), 30 * 16000, stride, stride)
            ]
            got = windows(wave, spec, stride_s)
            assert len(got) == len(want), (seconds, stride_s)
            for window, (samples, (size, left, right)) in zip(got, want, strict=True):
                np.testing.assert_array_equal(window.samples, samples)
                assert (window.samples.size, window.stride_left, window.stride_right) == (size, left, right)


def test_longest_common_sequence_equals_transformers() -> None:
    from transformers.models.whisper.tokenization_whisper import _find_longest_common_sequence

    rng = np.random.default_rng(1)
    for _ in range(200):
        text = rng.integers(0, 12, size=rng.integers(8, 40)).tolist()
        parts = []
        start = 0
        while start < len(text):
            stop = min(len(text), start + int(rng.integers(4, 14)))
            piece = text[max(0, start - int(rng.integers(0, 5))) : stop]
            if rng.random() < 0.3 and piece:
                piece[int(rng.integers(0, len(piece)))] = int(rng.integers(0, 12))  # a disagreement
            parts.append(piece)
            start = stop
        assert longest_common_sequence(parts) == _find_longest_common_sequence(parts)


def test_merge_windows_equals_transformers_decode_asr(whisper_ts_source: Path) -> None:
    """Random timestamped token streams in strided windows, merged by `merge_windows` and by the pipeline's
    ``_decode_asr``, with and without timestamps: the same text and the same (start, end) per piece."""
    from transformers import AutoTokenizer
    from transformers.models.whisper.tokenization_whisper import _decode_asr

    from toolkit.tasks.transcribe.timestamps import WindowOutput, merge_windows

    tokenizer = AutoTokenizer.from_pretrained(whisper_ts_source)
    begin = tokenizer.convert_tokens_to_ids("<|notimestamps|>") + 1
    languages = {tokenizer.convert_tokens_to_ids(f"<|{c}|>"): c for c in ("en", "de", "fr")}
    special = frozenset(tokenizer.all_special_ids)
    words = tokenizer.encode(" the quick brown fox jumps over the lazy dog", add_special_tokens=False)
    rng = np.random.default_rng(2)
    checked = 0
    for _ in range(60):
        count = int(rng.integers(1, 4))
        outputs = []
        for index in range(count):
            left = 0.0 if index == 0 else 5.0
            right = 0.0 if index == count - 1 else 5.0
            stamp, tokens = int(rng.integers(0, 40)), []
            for _ in range(int(rng.integers(1, 8))):
                tokens.append(begin + stamp)
                tokens.extend(int(w) for w in rng.choice(words, size=int(rng.integers(0, 5))))
                if rng.random() < 0.1:
                    tokens.append(int(rng.choice(list(languages))))
                stamp += int(rng.integers(0, 400))
                tokens.append(begin + min(stamp, 1500))
                if rng.random() < 0.6:
                    tokens.append(begin + min(stamp, 1500))
            outputs.append(WindowOutput(tuple(tokens), 30.0 if right else 25.0, left, right))
        for timestamps in (False, True):
            model_outputs = [
                {"tokens": np.asarray([o.tokens]), "stride": (o.seconds, o.stride_left, o.stride_right)}
                for o in outputs
            ]
            text, optional = _decode_asr(
                tokenizer,
                model_outputs,
                return_timestamps=timestamps,
                return_language=True,
                time_precision=0.02,
            )
            pieces = merge_windows(
                outputs,
                timestamps=timestamps,
                timestamp_begin=begin,
                special_ids=special,
                languages=languages,
            )
            assert "".join(tokenizer.decode(list(p.tokens)) for p in pieces) == text
            assert [p.language for p in pieces] == [
                None
                if c["language"] is None
                else {"english": "en", "german": "de", "french": "fr"}[c["language"]]
                for c in optional["chunks"]
            ]
            if timestamps:
                assert [(p.start, p.end) for p in pieces] == [c["timestamp"] for c in optional["chunks"]]
            checked += len(pieces)
    assert checked > 100


def _generate(source: Path, audio: np.ndarray, timestamps: bool, beams: int) -> list[int]:
    import torch
    from transformers import WhisperFeatureExtractor, WhisperForConditionalGeneration

    model = WhisperForConditionalGeneration.from_pretrained(source).eval()
    features = WhisperFeatureExtractor.from_pretrained(source)(
        audio, sampling_rate=16000, return_tensors="pt"
    )
    with torch.inference_mode():
        out = model.generate(
            features.input_features,
            language="en",
            return_timestamps=timestamps,
            num_beams=beams,
            do_sample=False,
            max_new_tokens=NEW_TOKENS,
        )
    return [int(t) for t in out[0].tolist()]


@pytest.mark.parametrize("beams", [1, 4])
def test_timestamped_tokens_equal_transformers_generate(
    beams: int, whisper_ts_source: Path, whisper_ts_package: Path
) -> None:
    from toolkit import SpeechRecognizer

    recognizer = SpeechRecognizer.load(whisper_ts_package, providers="cpu")
    begin = recognizer.spec.no_timestamps_token_id + 1  # type: ignore[operator]
    for seconds, seed in ((2.0, 3), (7.0, 4)):
        audio = speech(seconds, seed=seed)
        want = _generate(whisper_ts_source, audio, True, beams)
        got = recognizer.transcribe(
            [audio], language="en", timestamps=True, num_beams=beams, max_new_tokens=NEW_TOKENS
        )[0]
        assert list(got.token_ids) == want, (seconds, beams)
        assert want[0] >= begin
        assert sum(t >= begin for t in want) >= 4
        assert any(t < begin for t in want)
    # the rule decides: the same prompt decoded without it gives other tokens
    features = recognizer.task.features
    from toolkit.speech import log_mel

    states = recognizer._encode(log_mel(audio, features))
    prompt = recognizer._prompt("en", "transcribe", timestamps=True)
    free = recognizer.decode_rows(states, None, prompt, NEW_TOKENS, beams)[0]
    assert free[: len(want)] != want[: len(free)]


def _pipeline(source: Path) -> Any:
    from transformers import (
        AutoTokenizer,
        WhisperFeatureExtractor,
        WhisperForConditionalGeneration,
        pipeline,
    )

    return pipeline(
        "automatic-speech-recognition",
        model=WhisperForConditionalGeneration.from_pretrained(source).eval(),
        tokenizer=AutoTokenizer.from_pretrained(source),
        feature_extractor=WhisperFeatureExtractor.from_pretrained(source),
        device="cpu",
    )


def _pipeline_segments(result: dict[str, Any]) -> list[tuple[Any, Any, str]]:
    return [(c["timestamp"][0], c["timestamp"][1], c["text"].strip()) for c in result["chunks"]]


def test_segments_equal_the_pipeline_chunks(whisper_ts_source: Path, whisper_ts_package: Path) -> None:
    """The pipeline's ``_decode_asr`` closes a segment at every second timestamp; the tokenizer's
    ``output_offsets`` only at timestamp pairs, so the two disagree where the model puts a lone timestamp
    mid-text (this random one does): segments follow the pipeline."""
    from toolkit import SpeechRecognizer

    recognizer = SpeechRecognizer.load(whisper_ts_package, providers="cpu")
    audio = speech(7.0, seed=4)
    kwargs = {"language": "en", "num_beams": 1, "max_new_tokens": NEW_TOKENS}
    want = _pipeline(whisper_ts_source)(audio.copy(), return_timestamps=True, generate_kwargs=kwargs)
    got = recognizer.transcribe([audio], language="en", timestamps=True, max_new_tokens=NEW_TOKENS)[0]
    assert got.text == want["text"].strip()
    assert [(s.start, s.end, s.text) for s in got.segments] == _pipeline_segments(want)
    assert len(got.segments) >= 2


@pytest.mark.parametrize("timestamps", [False, True])
def test_a_long_clip_in_strided_windows_equals_the_chunked_pipeline(
    timestamps: bool, whisper_ts_source: Path, whisper_ts_package: Path
) -> None:
    from toolkit import SpeechRecognizer

    recognizer = SpeechRecognizer.load(whisper_ts_package, providers="cpu")
    clip = speech(65.0, seed=11)
    assert [
        (w.samples.size, w.stride_left, w.stride_right) for w in windows(clip, recognizer.task.features)
    ] == [
        (480000, 0, 80000),
        (480000, 80000, 80000),
        (400000, 80000, 0),
    ]
    kwargs = {"language": "en", "num_beams": 1, "max_new_tokens": NEW_TOKENS}
    want = _pipeline(whisper_ts_source)(
        clip.copy(), chunk_length_s=30, return_timestamps=timestamps, generate_kwargs=kwargs
    )
    got = recognizer.transcribe([clip], language="en", timestamps=timestamps, max_new_tokens=NEW_TOKENS)[0]
    assert got.text == want["text"].strip()
    assert got.text
    if timestamps:
        assert [(s.start, s.end, s.text) for s in got.segments] == _pipeline_segments(want)
        assert max(s.end or 0.0 for s in got.segments) > 40.0
    else:
        assert got.segments == ()
    # the overlap merge matters: consecutive 30 s pieces without a stride transcribe differently
    plain = recognizer.transcribe(
        [clip], language="en", timestamps=timestamps, max_new_tokens=NEW_TOKENS, stride_s=0
    )[0]
    assert plain.text != got.text


def test_manifest_records_the_initial_timestamp_limit_and_old_packages_load(
    whisper_ts_package: Path, tmp_path: Path
) -> None:
    spec = ModelPackage.open(whisper_ts_package).seq2seq_spec()
    assert spec.max_initial_timestamp_index == 50  # from the model's generation config
    copy = Path(shutil.copytree(whisper_ts_package, tmp_path / "pkg"))
    manifest_path = copy / "edge.json"
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    for value, expected in (("absent", 50), (None, None), (7, 7)):
        if value == "absent":
            manifest["seq2seq"].pop("max_initial_timestamp_index")
        else:
            manifest["seq2seq"]["max_initial_timestamp_index"] = value
        manifest_path.write_text(json.dumps(manifest), encoding="utf-8")
        assert ModelPackage.open(copy).seq2seq_spec().max_initial_timestamp_index == expected
    manifest["seq2seq"]["max_initial_timestamp_index"] = "soon"
    manifest_path.write_text(json.dumps(manifest), encoding="utf-8")
    with pytest.raises(BadModelError, match=r"seq2seq\.max_initial_timestamp_index"):
        ModelPackage.open(copy)


@pytest.mark.parametrize("stride", [15.0, -1.0, float("nan")])
def test_a_bad_stride_is_a_one_line_error(stride: float, whisper_ts_package: Path) -> None:
    from toolkit import SpeechRecognizer

    recognizer = SpeechRecognizer.load(whisper_ts_package, providers="cpu")
    with pytest.raises(BadInputError) as caught:
        recognizer.transcribe([speech(1.0)], language="en", stride_s=stride)
    assert "stride" in str(caught.value)
    assert "under 15 s" in str(caught.value)
    assert "\n" not in str(caught.value)


def test_edge_run_takes_a_stride_and_prints_segments(whisper_ts_package: Path, tmp_path: Path) -> None:
    clip = write_wav(tmp_path / "clip.wav", speech(40.0, seed=5), 16000)
    runner = CliRunner()
    args = ["run", str(whisper_ts_package), "--audio", str(clip), "--timestamps", "--stride", "4"]
    result = runner.invoke(edge, [*args, "--json"])
    assert result.exit_code == 0, result.output
    transcript = json.loads(result.output)["transcripts"][0]
    assert transcript["segments"]
    assert transcript["seconds"] == pytest.approx(40.0)
    text = runner.invoke(edge, args)
    assert text.exit_code == 0, text.output
    assert " -> " in text.output
    bad = runner.invoke(edge, ["run", str(whisper_ts_package), "--audio", str(clip), "--stride", "20"])
    assert bad.exit_code == 2
    assert "stride" in bad.output
    assert "Traceback" not in bad.output
