"""Audio pipelines: WAV reading, wav2vec 2.0 preprocessing against transformers' feature extractor, and the
encoder / classifier pipelines against the PyTorch model, on tiny random wav2vec 2.0 models (the recipe's
offline stand-in, and a clip classifier built here)."""

from __future__ import annotations

import json
import wave
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import build_offline_model

from converters import ConvertOptions, convert
from converters.export_tasks import TASKS
from converters.hf import load_hf_model, run_reference
from toolkit import ModelPackage, load
from toolkit.cli import edge
from toolkit.errors import BadInputError
from toolkit.manifest import AudioPreprocessing
from toolkit.pipelines import (
    AudioClassifier,
    AudioEncoder,
    ModelPipeline,
    preprocess_audio,
    read_wav,
)

RATE = 16000
LABELS = ("yes", "no", "up", "down")


def _voice(seconds: float, seed: int) -> np.ndarray:
    """A voiced, amplitude-modulated tone with a little noise, peak below 1: something like speech."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * RATE)) / RATE
    tone = np.sin(2 * np.pi * rng.uniform(120, 240) * t) * (0.4 + 0.3 * np.sin(2 * np.pi * 3 * t))
    return (0.8 * tone + rng.normal(0, 0.02, t.size)).clip(-0.99, 0.99).astype(np.float32)


def _write_wav(path: Path, samples: np.ndarray, rate: int = RATE, width: int = 2, channels: int = 1) -> Path:
    """`samples` [n] or [n, channels] in [-1, 1] as little-endian PCM of `width` bytes."""
    frames = samples.reshape(len(samples), -1)
    if width == 1:
        data = np.round(frames * 127 + 128).astype(np.uint8).tobytes()
    elif width == 3:
        ints = np.round(frames * (2**23 - 1)).astype("<i4").reshape(-1)
        data = np.stack([(ints >> shift) & 0xFF for shift in (0, 8, 16)], axis=1).astype(np.uint8).tobytes()
    else:
        data = np.round(frames * (2 ** (8 * width - 1) - 1)).astype(f"<i{width}").tobytes()
    with wave.open(str(path), "wb") as out:
        out.setnchannels(channels)
        out.setsampwidth(width)
        out.setframerate(rate)
        out.writeframes(data)
    return path


@pytest.fixture(scope="module")
def wav2vec2(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(source checkpoint, package): the wav2vec2 recipe's tiny stand-in, converted with the recipe."""
    root = tmp_path_factory.mktemp("wav2vec2")
    source = build_offline_model("wav2vec2", root / "source")
    package = convert(str(source), root / "package", ConvertOptions(recipe="wav2vec2")).path
    return source, package


@pytest.fixture(scope="module")
def clip_classifier(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(source checkpoint, package): a tiny wav2vec 2.0 clip classifier with four keyword labels."""
    import torch
    from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2ForSequenceClassification

    root = tmp_path_factory.mktemp("kws")
    config = Wav2Vec2Config(
        hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, conv_dim=[8, 8],
        conv_stride=[5, 4], conv_kernel=[10, 8], num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2,
        classifier_proj_size=8, id2label=dict(enumerate(LABELS)), label2id={v: i for i, v in enumerate(LABELS)},
    )  # fmt: skip
    torch.manual_seed(3)
    Wav2Vec2ForSequenceClassification(config).eval().save_pretrained(root / "source")
    Wav2Vec2FeatureExtractor(sampling_rate=RATE, do_normalize=True).save_pretrained(root / "source")
    package = convert(str(root / "source"), root / "package", ConvertOptions(task="audio-classify")).path
    return root / "source", package


# --- reading and preprocessing ---------------------------------------------------------------------------


@pytest.mark.parametrize("width", [1, 2, 3, 4])
def test_pcm_wav_of_every_width_reads_back_as_the_waveform(tmp_path: Path, width: int) -> None:
    clip = _voice(0.1, seed=width)
    samples, rate = read_wav(_write_wav(tmp_path / "clip.wav", clip, width=width))
    assert rate == RATE
    assert samples.dtype == np.float32
    assert samples.shape == clip.shape
    np.testing.assert_allclose(samples, clip, atol=2.0 / 2 ** (8 * width - 1))


def test_stereo_wav_is_averaged_to_mono(tmp_path: Path) -> None:
    left, right = _voice(0.1, seed=1), _voice(0.1, seed=2)
    samples, _ = read_wav(_write_wav(tmp_path / "stereo.wav", np.stack([left, right], axis=1), channels=2))
    np.testing.assert_allclose(samples, (left + right) / 2, atol=1e-4)


def test_preprocessing_matches_transformers_feature_extractor(wav2vec2: tuple[Path, Path]) -> None:
    from transformers import Wav2Vec2FeatureExtractor

    source, package = wav2vec2
    pre = ModelPackage.open(package).manifest.preprocessing
    assert pre == AudioPreprocessing(sampling_rate=RATE, normalize=True)
    extractor = Wav2Vec2FeatureExtractor.from_pretrained(source)
    for seed in range(3):
        clip = _voice(0.5 + seed / 4, seed) * (0.2 + seed)  # loud and quiet clips: normalising must undo gain
        want = extractor(clip, sampling_rate=RATE, return_tensors="np")["input_values"][0]
        np.testing.assert_allclose(preprocess_audio(clip, pre), want, atol=1e-6, rtol=0)


# --- pipelines against PyTorch ---------------------------------------------------------------------------


def test_encoder_gives_the_pytorch_frames_for_files_and_arrays(
    wav2vec2: tuple[Path, Path], tmp_path: Path
) -> None:
    from transformers import Wav2Vec2FeatureExtractor

    source, package = wav2vec2
    encoder = load(package)
    assert isinstance(encoder, AudioEncoder)
    clips = [_voice(1.0, seed=4), _voice(0.6, seed=5)]
    wav = _write_wav(tmp_path / "a.wav", clips[0])
    frames = encoder.encode([wav, clips[1]])
    extractor = Wav2Vec2FeatureExtractor.from_pretrained(source)
    model = load_hf_model(source, TASKS["audio-features"])
    for got, clip in zip(frames, [read_wav(wav)[0], clips[1]], strict=True):
        feeds = {"input_values": extractor(clip, sampling_rate=RATE, return_tensors="np")["input_values"]}
        want = run_reference(model, feeds, ("last_hidden_state",))["last_hidden_state"][0]
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


def test_classifier_ranks_labels_as_pytorch_does(clip_classifier: tuple[Path, Path]) -> None:
    from transformers import Wav2Vec2FeatureExtractor

    source, package = clip_classifier
    classifier = load(package)
    assert isinstance(classifier, AudioClassifier)
    clips = [_voice(0.5, seed) for seed in range(3)]
    ranked = classifier.classify(clips, top_k=2)
    extractor = Wav2Vec2FeatureExtractor.from_pretrained(source)
    model = load_hf_model(source, TASKS["audio-classify"])
    for top, clip in zip(ranked, clips, strict=True):
        feeds = {"input_values": extractor(clip, sampling_rate=RATE, return_tensors="np")["input_values"]}
        logits = run_reference(model, feeds, ("logits",))["logits"][0].astype(np.float64)
        probs = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
        assert len(top) == 2
        assert [c.label for c in top] == [LABELS[i] for i in np.argsort(-probs)[:2]]
        np.testing.assert_allclose([top[0].scores[label] for label in LABELS], probs, atol=1e-5)


# --- edge run --audio and bad input ----------------------------------------------------------------------


def test_edge_run_audio_prints_frames_and_top5(
    wav2vec2: tuple[Path, Path], clip_classifier: tuple[Path, Path], tmp_path: Path
) -> None:
    clip = _write_wav(tmp_path / "hello.wav", _voice(0.64, seed=8))
    encoder = load(wav2vec2[1])
    assert isinstance(encoder, AudioEncoder)
    frames, width = encoder.encode([clip])[0].shape
    result = CliRunner().invoke(edge, ["run", str(wav2vec2[1]), "--audio", str(clip)])
    assert result.exit_code == 0, result.output
    assert f"{clip}:\n  {frames} frames x {width}, mean" in result.output
    result = CliRunner().invoke(edge, ["run", str(clip_classifier[1]), "--audio", str(clip), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["task"] == "audio-classify"
    assert sorted(entry["label"] for entry in data["top5"][0]) == sorted(LABELS)
    assert abs(sum(entry["score"] for entry in data["top5"][0]) - 1.0) < 1e-6


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("8 kHz", "is sampled at 8000 Hz but the model takes 16000 Hz; resample it first"),
        ("not audio", "is not a PCM WAV file"),
        ("missing", "does not exist"),
    ],
)
def test_bad_clip_is_a_one_line_error(
    wav2vec2: tuple[Path, Path], tmp_path: Path, case: str, message: str
) -> None:
    clip = tmp_path / "clip.wav"
    if case == "8 kHz":
        _write_wav(clip, _voice(0.2, 1), rate=8000)
    elif case == "not audio":
        clip.write_bytes(b"RIFF....WAVE but nothing else")
    result = CliRunner().invoke(edge, ["run", str(wav2vec2[1]), "--audio", str(clip)])
    assert result.exit_code == 2
    assert result.output.startswith("error: ")
    assert message in result.output
    assert result.output.count("\n") == 1


def test_waveform_arrays_are_checked(wav2vec2: tuple[Path, Path]) -> None:
    encoder = load(wav2vec2[1])
    assert isinstance(encoder, AudioEncoder)
    with pytest.raises(BadInputError, match="1-D float array"):
        encoder.encode([np.zeros((2, 800), dtype=np.float32)])
    with pytest.raises(BadInputError, match="1-D float array"):
        encoder.encode([np.zeros(800, dtype=np.int16)])
    with pytest.raises(BadInputError, match="sampled at 44100 Hz"):
        encoder.encode([_voice(0.1, 1)], sampling_rate=44100)
    with pytest.raises(BadInputError, match="wrap a single clip"):
        encoder.encode(_voice(0.1, 1))


def test_bench_times_a_second_of_audio_not_128_samples(wav2vec2: tuple[Path, Path]) -> None:
    from toolkit.bench import BenchOptions, plan_bench, run_bench
    from toolkit.bench.measure import Budget, TimingPlan

    fast = TimingPlan(warmup=Budget(runs=1), measure=Budget(runs=3), min_runs=3)
    report = run_bench(plan_bench(wav2vec2[1], BenchOptions(timing=fast)))
    assert [(c.batch, c.seq) for c in report.cells] == [(1, RATE)]
    assert f"seq counts audio samples at {RATE} Hz: {RATE} = 1 s" in report.notes
    longer = run_bench(plan_bench(wav2vec2[1], BenchOptions(seqs=(RATE // 2, 3 * RATE), timing=fast)))
    assert [c.seq for c in longer.cells] == [RATE // 2, 3 * RATE]  # no text-style length cap on a waveform


def test_quantizing_a_speech_encoder_validates_on_waveforms(
    wav2vec2: tuple[Path, Path], tmp_path: Path
) -> None:
    """Held-out and calibration inputs are clips long enough for the conv front end (generic 16-step
    sequences made onnxruntime reject the graph); a folder of WAV files calibrates static int8."""
    import shutil

    from converters.quantization import CalibrationOptions, QuantizeOptions, quantize

    package = Path(shutil.copytree(wav2vec2[1], tmp_path / "package"))
    dynamic = quantize(package, "dynamic-int8")
    assert dynamic.accuracy is not None
    assert dynamic.accuracy.samples == 64
    assert dynamic.accuracy.score > 0.9  # mean output cosine against fp32
    assert dynamic.latency is not None
    assert "input_values [1, 16000]" in dynamic.latency.shape

    clips = tmp_path / "clips"
    clips.mkdir()
    for seed in range(3):
        _write_wav(clips / f"{seed}.wav", _voice(0.5, seed))
    static = quantize(package, "static-int8", QuantizeOptions(calibration=CalibrationOptions(data=clips)))
    assert static.variant is not None
    assert static.variant.settings["samples"] == 3
    assert static.variant.settings["calibration_source"] == "3 WAV files in clips"


def test_spectrogram_front_end_package_takes_raw_feeds(tmp_path: Path) -> None:
    """kws-cnn takes MFCC features, not a waveform: load() gives the raw pipeline, --audio says why not."""
    package = convert("kws-cnn", tmp_path / "kws").path
    assert type(load(package)) is ModelPipeline
    clip = _write_wav(tmp_path / "clip.wav", _voice(0.2, 1))
    result = CliRunner().invoke(edge, ["run", str(package), "--audio", str(clip)])
    assert result.exit_code == 2
    assert "takes no waveform" in result.output
    assert result.output.count("\n") == 1
