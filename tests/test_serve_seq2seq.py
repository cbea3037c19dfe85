"""`edge serve` for encoder-decoders: ``<name>-audio`` (WAV bytes in, transcripts out) and a decoding ``<name>-text``
for text-to-text packages, on one server subprocess behind an API key, checked against the library pipelines."""

from __future__ import annotations

import asyncio
import json
import socket
import struct
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from tests.seq2seq_models import CORPUS, speech, write_wav
from tests.serve_process import ServeProcess, start_serve
from toolkit.cli import edge
from toolkit.decoding.encoder_decoder import Seq2SeqStepper
from toolkit.errors import BadInputError
from toolkit.preprocess import read_wav
from toolkit.serve.batching import BatchingScheduler
from toolkit.serve.decoding import DecodeWork, DecodingModel
from toolkit.serve.errors import QueueFullError, ServerClosingError
from toolkit.serve.kserve.protocol import decode_request, decode_response, encode_request
from toolkit.serve.options import BatchOptions
from toolkit.serve.registry import ModelRegistry
from toolkit.tasks.base import PAD_ID
from toolkit.tasks.text2text import Seq2SeqGenerator
from toolkit.tasks.transcribe import SpeechRecognizer, Transcript

API_KEY = "seq2seq-key-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {API_KEY}"}


@dataclass(frozen=True)
class Endpoint:
    """A server's base URL (a `ServeProcess` has one too): what the request helpers need."""

    url: str


# -- the server and its clients ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def served(s2s_packages: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    """Whisper, BART and T5 behind an API key; a 256-token request limit for the text models."""
    packages = [s2s_packages[k] for k in ("whisper", "bart", "t5")]
    args = ["--threads", "1", "--max-request-tokens", "256", "--max-request-rows", "8"]
    server = start_serve(packages, args, tmp_path_factory.mktemp("serve-s2s"), env={"EDGE_API_KEY": API_KEY})
    try:
        yield server
    finally:
        assert server.stop() == 0


@pytest.fixture(scope="module")
def wavs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Three clips: 16 kHz mono, the same speech at 44.1 kHz stereo, and a second 16 kHz clip."""
    folder = tmp_path_factory.mktemp("wavs")
    return {
        "mono": write_wav(folder / "mono.wav", speech(2.0), 16000),
        "stereo": write_wav(folder / "stereo.wav", speech(2.0, 44100), 44100, channels=2),
        "other": write_wav(folder / "other.wav", speech(1.5, seed=9), 16000),
    }


@pytest.fixture(scope="module")
def recognizer(s2s_packages: dict[str, Path]) -> Iterator[SpeechRecognizer]:
    with SpeechRecognizer.load(s2s_packages["whisper"], threads=1) as pipeline:
        yield pipeline


def _call(server: ServeProcess | Endpoint, method: str, path: str, body: bytes | None = None, headers: Mapping[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:  # fmt: skip
    request = urllib.request.Request(server.url + path, data=body, method=method, headers=dict(headers or {}))
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, {k.lower(): v for k, v in response.headers.items()}, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, {k.lower(): v for k, v in exc.headers.items()}, exc.read()


def _body(
    inputs: Mapping[str, np.ndarray], parameters: Mapping[str, Any], outputs: Sequence[str] | None
) -> tuple[bytes, dict[str, str]]:
    """A binary v2 request carrying `parameters`, and its headers."""
    encoded = encode_request(inputs, binary=True, outputs=outputs, binary_output=True)
    length = encoded.header_length
    assert length is not None
    header = json.loads(encoded.body[:length])
    header["parameters"] = {**header.get("parameters", {}), **parameters}
    text = json.dumps(header).encode()
    return text + encoded.body[length:], {"Inference-Header-Content-Length": str(len(text)), **AUTH}


def _infer(
    server: ServeProcess | Endpoint,
    model: str,
    inputs: Mapping[str, np.ndarray],
    parameters: Mapping[str, Any] | None = None,
    outputs: Sequence[str] | None = None,
) -> tuple[int, dict[str, np.ndarray] | str]:
    """(status, outputs) on 200, (status, the error line) otherwise."""
    body, headers = _body(inputs, parameters or {}, outputs)
    status, response_headers, data = _call(server, "POST", f"/v2/models/{model}/infer", body, headers)
    if status != 200:
        return status, json.loads(data)["error"]
    length = response_headers.get("inference-header-content-length")
    return status, decode_response(data, int(length) if length else None)[1]


def _bytes(items: Sequence[bytes]) -> np.ndarray:
    array = np.empty(len(items), dtype=object)
    array[:] = list(items)
    return array


def _audio(*paths: Path) -> dict[str, np.ndarray]:
    return {"audio": _bytes([p.read_bytes() for p in paths])}


def _texts(*texts: str) -> dict[str, np.ndarray]:
    return {"text": _bytes([t.encode("utf-8") for t in texts])}


def _strings(array: np.ndarray) -> list[str]:
    return [bytes(v).decode("utf-8") for v in array.reshape(-1)]


def _ids(array: np.ndarray) -> list[tuple[int, ...]]:
    return [tuple(int(t) for t in row if t != PAD_ID) for row in array]


def _segments(transcript: Transcript) -> list[dict[str, Any]]:
    def seconds(value: float | None) -> float | None:
        return None if value is None else round(value, 3)

    return [{"start": seconds(s.start), "end": seconds(s.end), "text": s.text} for s in transcript.segments]


def _error(server: ServeProcess | Endpoint, model: str, inputs: Mapping[str, np.ndarray], parameters: Mapping[str, Any] | None = None, outputs: Sequence[str] | None = None) -> str:  # fmt: skip
    status, message = _infer(server, model, inputs, parameters, outputs)
    assert status == 400, (status, message)
    assert isinstance(message, str)
    assert "\n" not in message
    assert "Traceback" not in message
    return message


def _float_wav(path: Path, samples: np.ndarray, rate: int) -> Path:
    """A WAV of 32-bit float samples (format tag 3), which the reader refuses."""
    data = samples.astype("<f4").tobytes()
    fmt = struct.pack("<HHIIHH", 3, 1, rate, rate * 4, 4, 32)
    chunks = b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(data)) + data
    path.write_bytes(b"RIFF" + struct.pack("<I", 4 + len(chunks)) + b"WAVE" + chunks)
    return path


# -- metadata --------------------------------------------------------------------------------------------------


def test_metadata_lists_the_decoding_models_beside_the_raw_encoders(served: ServeProcess) -> None:
    def get(path: str) -> Any:
        status, _, body = _call(served, "GET", path, headers=AUTH)
        assert status == 200, (path, body)
        return json.loads(body)

    audio = get("/v2/models/whisper-audio")
    assert audio["platform"] == "edge_speech_pipeline"
    assert audio["inputs"] == [{"name": "audio", "datatype": "BYTES", "shape": [-1]}]
    assert [(o["name"], o["datatype"]) for o in audio["outputs"]] == [
        ("text", "BYTES"),
        ("language", "BYTES"),
        ("segments", "BYTES"),
        ("token_ids", "INT64"),
    ]
    for kind in ("bart", "t5"):
        text = get(f"/v2/models/{kind}-text")
        assert text["platform"] == "edge_text2text_pipeline"
        assert text["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
        assert [o["name"] for o in text["outputs"]] == ["text", "token_ids"]
        # the raw encoder stays served as it was
        assert [i["name"] for i in get(f"/v2/models/{kind}")["inputs"]] == ["input_ids", "attention_mask"]
    assert get("/v2/models/whisper")["inputs"][0]["name"] == "input_features"
    config = get("/v2/models/whisper-audio/config")
    assert config["input"][0]["data_type"] == "TYPE_STRING"
    # each decode request runs alone: no dynamic batching advertised (the raw encoder batches)
    assert "dynamic_batching" not in config
    assert "dynamic_batching" in get("/v2/models/whisper/config")
    names = {
        entry["name"] for entry in json.loads(_call(served, "POST", "/v2/repository/index", b"", AUTH)[2])
    }
    assert {"whisper", "whisper-audio", "bart", "bart-text", "t5", "t5-text"} <= names


# -- answers equal the library's -------------------------------------------------------------------------------


def test_transcripts_equal_the_library_for_mono_and_44k_stereo_wavs(
    served: ServeProcess, recognizer: SpeechRecognizer, wavs: dict[str, Path]
) -> None:
    paths = [wavs["mono"], wavs["stereo"], wavs["other"]]
    status, outputs = _infer(served, "whisper-audio", _audio(*paths))
    assert status == 200
    assert isinstance(outputs, dict)
    assert set(outputs) == {"text", "language", "token_ids"}  # segments only with timestamps
    expected = recognizer.transcribe(paths)
    assert _strings(outputs["text"]) == [t.text for t in expected]
    assert _strings(outputs["language"]) == [t.language for t in expected]
    assert _ids(outputs["token_ids"]) == [t.token_ids for t in expected]
    assert all(len(t.token_ids) > 0 for t in expected)


@pytest.mark.parametrize(
    "parameters",
    [
        {"num_beams": 4},
        {"language": "de", "task": "translate"},
        {"timestamps": True, "max_new_tokens": 10},
    ],
    ids=["beams", "language-task", "timestamps"],
)
def test_audio_parameters_take_effect_as_in_the_library(
    served: ServeProcess, recognizer: SpeechRecognizer, wavs: dict[str, Path], parameters: dict[str, Any]
) -> None:
    paths = [wavs["mono"], wavs["stereo"]]
    status, outputs = _infer(served, "whisper-audio", _audio(*paths), parameters)
    assert status == 200
    assert isinstance(outputs, dict)
    expected = recognizer.transcribe(paths, **parameters)
    assert _ids(outputs["token_ids"]) == [t.token_ids for t in expected]
    assert _strings(outputs["text"]) == [t.text for t in expected]
    assert _strings(outputs["language"]) == [t.language for t in expected]
    if parameters.get("timestamps"):
        assert [json.loads(s) for s in _strings(outputs["segments"])] == [_segments(t) for t in expected]
        # max_new_tokens bounds each decoding pass of a window (as transformers' generate), not the whole clip
        assert [t.token_ids for t in expected] != [t.token_ids for t in recognizer.transcribe(paths)]
    else:
        assert "segments" not in outputs
    if "language" in parameters:
        assert _strings(outputs["language"]) == ["de", "de"]
    # the parameters changed something: the defaults give other tokens or another language
    default = recognizer.transcribe(paths)
    assert [(t.token_ids, t.language) for t in default] != [(t.token_ids, t.language) for t in expected]


@pytest.mark.parametrize("kind", ["bart", "t5"])
def test_text2text_equals_generate_greedy_and_with_four_beams(
    served: ServeProcess, s2s_packages: dict[str, Path], kind: str
) -> None:
    with Seq2SeqGenerator.load(s2s_packages[kind], threads=1) as generator:
        greedy = generator.generate(CORPUS)
        beams = generator.generate(CORPUS, num_beams=4)
        short = generator.generate(CORPUS, max_new_tokens=3)
        settings = {"num_beams": 4, "no_repeat_ngram_size": 1, "length_penalty": 2.0, "early_stopping": True}
        tuned = generator.generate(CORPUS, **settings)
    assert [g.token_ids for g in greedy] != [b.token_ids for b in beams]
    assert [t.token_ids for t in tuned] != [b.token_ids for b in beams]
    cases = (({}, greedy), ({"num_beams": 4}, beams), ({"max_new_tokens": 3}, short), (settings, tuned))
    for parameters, expected in cases:
        status, outputs = _infer(served, f"{kind}-text", _texts(*CORPUS), parameters)
        assert status == 200, outputs
        assert isinstance(outputs, dict)
        assert _strings(outputs["text"]) == [e.text for e in expected], parameters
        assert _ids(outputs["token_ids"]) == [e.token_ids for e in expected], parameters
    status, outputs = _infer(served, f"{kind}-text", _texts(CORPUS[0]), outputs=["text"])
    assert status == 200
    assert isinstance(outputs, dict)
    assert list(outputs) == ["text"]


# -- bad input, limits, auth, metrics ------------------------------------------------------------------------


def test_bad_audio_and_parameters_are_one_line_400s(served: ServeProcess, wavs: dict[str, Path], tmp_path: Path) -> None:  # fmt: skip
    good = wavs["mono"].read_bytes()
    message = _error(served, "whisper-audio", {"audio": _bytes([good, b"RIFF....not a wav"])})
    assert "input 'audio' element 1 is not a PCM WAV file" in message
    assert "ffmpeg" in message
    floats = _float_wav(tmp_path / "float.wav", speech(0.5), 16000).read_bytes()
    message = _error(served, "whisper-audio", {"audio": _bytes([floats])})
    assert "element 0 is not a PCM WAV file (it holds 32/64-bit float samples)" in message
    assert "pcm_s16le" in message
    empty = write_wav(tmp_path / "empty.wav", np.zeros(0, dtype=np.float32), 16000).read_bytes()
    message = _error(served, "whisper-audio", {"audio": _bytes([good, empty])})
    assert "element 1 holds no samples (a zero-length clip)" in message
    message = _error(served, "whisper-audio", _audio(wavs["mono"]), {"language": "xx"})
    assert "unknown language code 'xx'" in message
    assert "de, en, fr" in message
    message = _error(served, "whisper-audio", _audio(wavs["mono"]), {"task": "sing"})
    assert "unknown task 'sing'" in message
    assert "transcribe, translate" in message
    cases: list[tuple[dict[str, Any], str]] = [
        ({"timestamps": "yes"}, "parameter 'timestamps' must be true or false"),
        ({"num_beams": 0}, "parameter 'num_beams' must be an integer of at least 1"),
        ({"max_new_tokens": 2.5}, "parameter 'max_new_tokens' must be an integer of at least 1"),
        ({"language": 7}, "parameter 'language' must be a string"),
        ({"num_beams": 5000}, "parameter 'num_beams' is 5000, over this server's limit of 16"),
        ({"max_new_tokens": 10**9}, "parameter 'max_new_tokens' is 1000000000, over this server's limit of"),
    ]
    for parameters, fragment in cases:
        assert fragment in _error(served, "whisper-audio", _audio(wavs["mono"]), parameters)
    for rate in (0, 1, 1_000_003):  # issue 21 row 7: the header's rate, refused before anything is read
        wav = bytearray(good)
        wav[24:28] = rate.to_bytes(4, "little")
        message = _error(served, "whisper-audio", {"audio": _bytes([bytes(wav)])})
        assert f"at {rate} Hz, outside the 1000-384000 Hz" in message
    message = _error(served, "whisper-audio", _audio(wavs["mono"]), outputs=["segments"])
    assert "output 'segments' needs the request parameter timestamps=true" in message
    message = _error(served, "whisper-audio", _texts("hello"))
    assert "model 'whisper-audio' takes one input 'audio'" in message
    message = _error(served, "whisper-audio", {"audio": np.zeros(3, dtype=np.int64)})
    assert "input 'audio': expected datatype BYTES, got INT64" in message


def test_bad_text_is_a_one_line_400_and_limits_are_413(served: ServeProcess) -> None:
    message = _error(served, "bart-text", {"text": _bytes([b"ok", b"\xff\xfe"])})
    assert "not valid UTF-8" in message
    message = _error(served, "bart-text", _audio())
    assert "model 'bart-text' takes one input 'text'" in message
    message = _error(served, "t5-text", _texts("hi"), {"num_beams": -1})
    assert "parameter 'num_beams' must be an integer of at least 1" in message
    message = _error(served, "t5-text", _texts("hi"), {"num_beams": 17})
    assert "over this server's limit of 16" in message
    message = _error(served, "t5-text", _texts("hi"), {"length_penalty": "long"})
    assert message == "length_penalty must be a finite number, got 'long'"
    status, answer = _infer(served, "t5-text", _texts(*["word " * 300] * 4))
    assert status == 413
    assert "over the 256-token limit" in str(answer)
    status, answer = _infer(served, "bart-text", _texts(*["a"] * 9))
    assert status == 413
    assert "9 rows, over the 8-row limit" in str(answer)


def test_the_api_key_is_required_and_metrics_count_the_decoding_models(
    served: ServeProcess, wavs: dict[str, Path]
) -> None:
    for model, inputs in (("whisper-audio", _audio(wavs["mono"])), ("bart-text", _texts("hello"))):
        body, headers = _body(inputs, {}, None)
        del headers["Authorization"]
        status, _, data = _call(served, "POST", f"/v2/models/{model}/infer", body, headers)
        assert status == 401
        assert "Authorization: Bearer" in json.loads(data)["error"]
        wrong = {**headers, "Authorization": "Bearer " + "x" * len(API_KEY)}
        assert _call(served, "POST", f"/v2/models/{model}/infer", body, wrong)[0] == 401
        assert _call(served, "GET", f"/v2/models/{model}")[0] == 401
    assert _infer(served, "whisper-audio", _audio(wavs["mono"]))[0] == 200
    status, _, body = _call(served, "GET", "/metrics", headers=AUTH)
    assert status == 200
    text = body.decode()
    assert 'edge_requests_total{code="200",model="whisper-audio",version="fp32"}' in text
    assert 'edge_batch_size_count{model="whisper-audio",version="fp32"}' in text
    assert 'edge_requests_total{code="400",model="whisper-audio",version="fp32"}' in text


def test_a_request_past_its_deadline_is_504_and_the_server_goes_on(served: ServeProcess, wavs: dict[str, Path]) -> None:  # fmt: skip
    status, message = _infer(served, "whisper-audio", _audio(*[wavs["stereo"]] * 8), {"timeout": 1})
    assert status == 504
    assert "model 'whisper-audio' did not answer within" in str(message)
    assert _infer(served, "bart-text", _texts("hello"))[0] == 200


# -- in process: cancellation, WAV bytes in the library, Triton ----------------------------------------------


def test_decode_requests_run_one_per_run_under_the_queue_limit(s2s_packages: dict[str, Path]) -> None:
    """The scheduler gives a decoding model one request per run (no request waits for a batch-mate's decode)
    and refuses one past --max-queue; the decode itself is held on a gate here so the queue state is certain."""
    model = ModelRegistry.load([s2s_packages["t5"]]).get("t5-text")
    engine = model.engine
    gate = threading.Event()
    runs: list[int] = []

    def held(stopped: Callable[[], bool]) -> dict[str, np.ndarray]:
        runs.append(1)
        gate.wait(60)
        return {"text": _bytes([b"done"])}

    batches: list[tuple[int, int]] = []

    class Observer:
        def on_batch(self, label: tuple[str, str], rows: int, requests: int, seconds: float) -> None:
            batches.append((rows, requests))

        def on_depth(self, label: tuple[str, str], depth: int) -> None:
            pass

    async def scenario() -> None:
        scheduler = BatchingScheduler(BatchOptions(max_batch=32, max_delay_ms=200, max_queue=1), Observer())
        first = asyncio.create_task(scheduler.submit(engine, DecodeWork("held", {}, held), 1, None))
        while not runs:
            await asyncio.sleep(0.01)
        second = asyncio.create_task(scheduler.submit(engine, DecodeWork("held", {}, held), 1, None))
        await asyncio.sleep(0.05)
        with pytest.raises(QueueFullError, match="the limit is 1"):
            await scheduler.submit(engine, DecodeWork("held", {}, held), 1, None)
        gate.set()
        for task in (first, second):
            assert _strings((await task)["text"]) == ["done"]
        await scheduler.aclose()

    asyncio.run(scenario())
    assert batches == [(1, 1), (1, 1)]


def test_an_abandoned_decode_stops_at_its_next_decoder_step(s2s_packages: dict[str, Path], wavs: dict[str, Path]) -> None:  # fmt: skip
    """Issue 21 row 9: a request cancelled in the middle of one clip's beam search stops at the next step."""
    registry = ModelRegistry.load([s2s_packages["whisper"]])
    model = registry.get("whisper-audio")
    assert isinstance(model, DecodingModel)
    body, headers = _body(_audio(wavs["mono"]), {"num_beams": 4, "max_new_tokens": 40}, None)
    job = model.prepare(decode_request(body, int(headers["Inference-Header-Content-Length"])))
    assert isinstance(job.feeds, DecodeWork)
    steps = 0
    original = Seq2SeqStepper.step

    def counting(self: Seq2SeqStepper, tokens: np.ndarray) -> np.ndarray:
        nonlocal steps
        steps += 1
        if steps == 3:
            job.cancel()  # the client leaves while the decoder runs
        return original(self, tokens)

    Seq2SeqStepper.step = counting  # type: ignore[method-assign]
    try:
        (abandoned,) = model.engine.run_many([job.feeds])
    finally:
        Seq2SeqStepper.step = original  # type: ignore[method-assign]
    assert isinstance(abandoned, ServerClosingError)
    assert steps == 3  # the step that saw the cancel ran no decoder; 40 tokens x 4 beams would run ~40 steps


def test_an_abandoned_decode_stops_before_its_next_clip(s2s_packages: dict[str, Path], wavs: dict[str, Path]) -> None:  # fmt: skip
    registry = ModelRegistry.load([s2s_packages["whisper"]])
    model = registry.get("whisper-audio")
    assert isinstance(model, DecodingModel)
    body, headers = _body(_audio(wavs["mono"], wavs["other"]), {}, None)
    request = decode_request(body, int(headers["Inference-Header-Content-Length"]))
    job = model.prepare(request)
    assert isinstance(job.feeds, DecodeWork)
    (answer,) = model.engine.run_many([job.feeds])
    assert isinstance(answer, dict)
    assert answer["text"].shape == (2,)
    job.cancel()
    (abandoned,) = model.engine.run_many([job.feeds])
    assert isinstance(abandoned, ServerClosingError)
    assert "abandoned" in str(abandoned)
    # an unknown language or task is refused while the request is prepared, before it waits in the queue
    for parameters, message in (
        ({"language": "xx"}, "unknown language code 'xx'"),
        ({"task": "sing"}, "unknown task"),
    ):
        body, headers = _body(_audio(wavs["mono"]), parameters, None)
        with pytest.raises(BadInputError, match=message):
            model.prepare(decode_request(body, int(headers["Inference-Header-Content-Length"])))


def test_read_wav_and_transcribe_take_a_files_bytes(
    recognizer: SpeechRecognizer, wavs: dict[str, Path]
) -> None:
    for path in wavs.values():
        from_path, rate = read_wav(path)
        from_bytes, same_rate = read_wav(path.read_bytes())
        assert rate == same_rate
        np.testing.assert_array_equal(from_bytes, from_path)
    paths = [wavs["stereo"], wavs["other"]]
    by_path = recognizer.transcribe(paths)
    by_bytes = recognizer.transcribe([p.read_bytes() for p in paths])
    assert [t.token_ids for t in by_bytes] == [t.token_ids for t in by_path]
    with pytest.raises(BadInputError, match=r"audio data \(4 bytes\) is not a PCM WAV file"):
        read_wav(b"RIFF")
    with pytest.raises(BadInputError, match="clips must be a list; wrap a single clip"):
        recognizer.transcribe(wavs["mono"].read_bytes())  # type: ignore[arg-type]


def test_triton_export_refuses_an_encoder_decoder_in_one_line(s2s_packages: dict[str, Path], tmp_path: Path) -> None:  # fmt: skip
    result = CliRunner().invoke(
        edge, ["export", "triton", str(s2s_packages["whisper"]), "-o", str(tmp_path / "repo")]
    )
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("error: ")
    assert "is an encoder-decoder (task 'transcribe')" in lines[0]
    assert "edge serve" in lines[0]
    assert not (tmp_path / "repo").exists()


def test_ray_serve_serves_the_decoding_models(
    s2s_packages: dict[str, Path], recognizer: SpeechRecognizer, wavs: dict[str, Path]
) -> None:
    """`edge serve --ray` builds the same app on each replica: both decoding models answer as the library does."""
    import ray
    from ray import serve

    from toolkit.serve.options import ServeOptions
    from toolkit.serve.ray_app import RayOptions, deploy_on_ray, ray_application
    from toolkit.serve.registry import LoadOptions

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    ray_options = RayOptions(replicas=1, num_cpus=0.5, local_cpus=2, port=port)
    options = ServeOptions(api_key=API_KEY)
    application = ray_application(
        [s2s_packages["whisper"], s2s_packages["t5"]], LoadOptions(threads=1), options, ray_options
    )
    try:
        url = deploy_on_ray(application, ray_options, options)
        proxy = Endpoint(url)
        status, outputs = _infer(proxy, "whisper-audio", _audio(wavs["stereo"]), {"num_beams": 2})
        assert status == 200
        assert isinstance(outputs, dict)
        (expected,) = recognizer.transcribe([wavs["stereo"]], num_beams=2)
        assert _ids(outputs["token_ids"]) == [expected.token_ids]
        with Seq2SeqGenerator.load(s2s_packages["t5"], threads=1) as generator:
            (generated,) = generator.generate([CORPUS[1]])
        status, outputs = _infer(proxy, "t5-text", _texts(CORPUS[1]))
        assert status == 200
        assert isinstance(outputs, dict)
        assert _ids(outputs["token_ids"]) == [generated.token_ids]
        assert "not a PCM WAV" in _error(proxy, "whisper-audio", {"audio": _bytes([b"nope"])})
    finally:
        serve.shutdown()
        ray.shutdown()


# -- the server's decoding limits and a deadline mid-beam-search (issue 21 rows 8 and 9) -------------------


def _rss_mb(pid: int) -> float:
    import psutil

    return psutil.Process(pid).memory_info().rss / 2**20


def test_decoding_limits_are_server_options_and_a_deadline_stops_200_beams_at_a_step(s2s_packages: dict[str, Path], wavs: dict[str, Path], tmp_path: Path) -> None:  # fmt: skip
    """--max-beam-width and --max-new-tokens bound what a request may ask for (400 naming the option); 200 beams over
    a 2 s clip decode for seconds, so past its 1 s deadline the request is a 504 and the worker stops at its next
    decoder step: the requests after it are answered within their own 5 s deadline (Triton's ``timeout``
    parameter is in microseconds)."""
    args = ["--threads", "1", "--max-beam-width", "256", "--max-new-tokens", "32"]
    server = start_serve([s2s_packages["whisper"]], args, tmp_path / "serve", env={"EDGE_API_KEY": API_KEY})
    try:
        before = _rss_mb(server.process.pid)
        message = _error(server, "whisper-audio", _audio(wavs["mono"]), {"num_beams": 5000})
        assert message == (
            "parameter 'num_beams' is 5000, over this server's limit of 256; ask for 256 or fewer "
            "(or raise --max-beam-width)"
        )
        message = _error(server, "whisper-audio", _audio(wavs["mono"]), {"max_new_tokens": 33})
        assert message.endswith("limit of 32; ask for 32 or fewer (or raise --max-new-tokens)")
        assert _rss_mb(server.process.pid) - before < 300
        assert _infer(server, "whisper-audio", _audio(wavs["mono"]), {"max_new_tokens": 32})[0] == 200
        status, message = _infer(server, "whisper-audio", _audio(wavs["mono"]), {"num_beams": 200, "timeout": 1_000_000})  # fmt: skip
        assert status == 504, message
        for _ in range(3):
            answer = _infer(server, "whisper-audio", _audio(wavs["mono"]), {"timeout": 5_000_000})
            assert answer[0] == 200, answer
        assert "Traceback" not in server.log.read_text(encoding="utf-8")
    finally:
        assert server.stop() == 0
