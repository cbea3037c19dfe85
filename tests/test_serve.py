"""`edge serve`: the KServe v2 server as a subprocess on 127.0.0.1, called with tritonclient and plain HTTP.

Three server processes: the main one (tiny BERT, tiny classifier, MiniLM; batching with a 100 ms window
so concurrent requests merge), a "held" one whose batches never fill (queue full -> 503, timeout -> 504),
and one that is stopped with SIGTERM while requests wait in its queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import signal
import struct
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.http as triton
from click.testing import CliRunner
from prometheus_client.parser import text_string_to_metric_families

from tests.serve_process import ServeProcess, start_serve
from toolkit import Runner
from toolkit.cli import edge
from toolkit.manifest import ModelPackage
from toolkit.pipelines import TextClassifier, TextEmbedding
from toolkit.serve.batching import DynamicBatcher
from toolkit.serve.engine import Engine
from toolkit.serve.kserve.protocol import (
    ResponseOutput,
    decode_request,
    decode_response,
    encode_request,
    encode_response,
)
from toolkit.serve.options import BatchOptions

STARTUP_S = 120.0
SENTENCES = [
    "hello world",
    "the quick brown fox jumps over the lazy dog",
    "edge inference on a small device is fast",
    "a cat sat on the mat",
    "this model runs with onnx",
    "text",
]


# -- the server subprocess ----------------------------------------------------------------------------


Server = ServeProcess


def _start(packages: Sequence[Path], args: Sequence[str], folder: Path) -> Server:
    server = start_serve(packages, args, folder)
    assert _get(server, "/v2/health/ready")[0] == 200
    return server


@contextlib.contextmanager
def _running(packages: Sequence[Path], args: Sequence[str], folder: Path) -> Iterator[Server]:
    server = _start(packages, args, folder)
    try:
        yield server
    finally:
        server.stop()


def _request(server: Server, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:  # fmt: skip
    request = urllib.request.Request(server.url + path, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, {k.lower(): v for k, v in response.headers.items()}, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, {k.lower(): v for k, v in exc.headers.items()}, exc.read()


def _get(server: Server, path: str) -> tuple[int, Any]:
    status, _, body = _request(server, "GET", path)
    return status, json.loads(body) if body else None


def _post_json(server: Server, path: str, payload: Any) -> tuple[int, Any]:
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    status, _, data = _request(server, "POST", path, body, {"Content-Type": "application/json"})
    return status, json.loads(data)


def _metrics(server: Server) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    status, _, body = _request(server, "GET", "/metrics")
    assert status == 200
    values = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            values[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return values


def _metric(server: Server, name: str, **labels: str) -> float:
    return sum(
        value
        for (sample, sample_labels), value in _metrics(server).items()
        if sample == name and all((k, v) in sample_labels for k, v in labels.items())
    )


def _wait_for(condition: Any, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.02)


def _bert_feeds(lengths: Sequence[int], seed: int = 0, vocab: int = 40) -> dict[str, np.ndarray]:
    """Right-padded token ids as a tokenizer gives them: [CLS]=2 ... [SEP]=3, padding 0, mask 1/0."""
    rng = np.random.default_rng(seed)
    width = max(lengths)
    ids = np.zeros((len(lengths), width), dtype=np.int64)
    mask = np.zeros((len(lengths), width), dtype=np.int64)
    for row, length in enumerate(lengths):
        ids[row, :length] = [2, *rng.integers(5, vocab, size=length - 2), 3]
        mask[row, :length] = 1
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}


def _triton_inputs(feeds: dict[str, np.ndarray], binary: bool) -> list[triton.InferInput]:
    inputs = []
    for name, array in feeds.items():
        tensor = triton.InferInput(name, list(array.shape), triton.np_to_triton_dtype(array.dtype))
        tensor.set_data_from_numpy(array, binary_data=binary)
        inputs.append(tensor)
    return inputs


def _name(package: Path) -> str:
    return ModelPackage.open(package).manifest.name


# -- fixtures -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(
    bert_versions: Path,
    tiny_classifier_package: Path,
    minilm_package: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Server]:
    """The main server: three packages, batches of up to 8 rows gathered for up to 100 ms, 256 KiB bodies."""
    args = ["--max-batch", "8", "--max-delay-ms", "100", "--max-body-mb", "0.25", "--threads", "1"]
    with _running(
        [bert_versions, tiny_classifier_package, minilm_package], args, tmp_path_factory.mktemp("serve")
    ) as running:
        yield running


# -- library pieces, no server --------------------------------------------------------------------------


def test_importing_toolkit_and_its_cli_loads_no_web_stack() -> None:
    code = (
        "import sys, toolkit, toolkit.cli, toolkit.serve.models; "
        "print(sorted(m for m in ('fastapi', 'uvicorn', 'starlette', 'prometheus_client') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


@pytest.mark.parametrize("binary", [True, False])
def test_protocol_round_trips_every_datatype(binary: bool) -> None:
    arrays = {
        "b": np.array([[True, False, True]]),
        "i8": np.array([-128, 0, 127], dtype=np.int8),
        "u16": np.array([0, 65535], dtype=np.uint16),
        "i64": np.array([[-(2**62), 2**62]], dtype=np.int64),
        "u64": np.array([2**63 + 5], dtype=np.uint64),
        "f16": np.array([0.5, -2.25], dtype=np.float16),
        "f32": np.arange(6, dtype=np.float32).reshape(2, 3) / 7,
        "f64": np.array([np.pi]),
        "s": np.array([["héllo", ""], ["a b", "x"]], dtype=object),
    }
    encoded = encode_request(arrays, binary=binary, request_id="r1")
    request = decode_request(encoded.body, encoded.header_length)
    assert request.id == "r1"
    assert [i.datatype for i in request.inputs] == ["BOOL", "INT8", "UINT16", "INT64", "UINT64", "FP16", "FP32", "FP64", "BYTES"]  # fmt: skip
    for tensor in request.inputs:
        expected = arrays[tensor.name]
        if tensor.datatype == "BYTES":
            expected = np.vectorize(lambda s: s.encode(), otypes=[object])(expected)
        np.testing.assert_array_equal(tensor.data, expected)
        assert tensor.data.shape == expected.shape
    response = encode_response("m", "fp32", [ResponseOutput(n, a, binary) for n, a in arrays.items()], "r1")
    header, outputs = decode_response(response.body, response.header_length)
    assert header["id"] == "r1"
    for name, array in arrays.items():
        expected = (
            np.vectorize(lambda s: s.encode(), otypes=[object])(array) if array.dtype == object else array
        )
        np.testing.assert_array_equal(outputs[name], expected)
        assert outputs[name].dtype == expected.dtype


def test_engine_pads_merges_and_splits_back_to_unbatched_results(bert_runner: Runner) -> None:
    engine = Engine("bert", "fp32", bert_runner, {"input_ids": 0}, ("batch_size", "sequence_length"))
    assert engine.batch_dim == "batch_size"
    assert engine.pad_dims == {"sequence_length"}
    jobs = [_bert_feeds([length], seed=length) for length in (3, 9, 5)] + [_bert_feeds([4, 7], seed=11)]
    results = engine.run_many(jobs)
    for feeds, result in zip(jobs, results, strict=True):
        assert isinstance(result, dict)
        alone = bert_runner.run(feeds)["last_hidden_state"]
        assert result["last_hidden_state"].shape == alone.shape
        np.testing.assert_allclose(result["last_hidden_state"], alone, atol=1e-5)
    # Without padding allowed, unequal lengths run apart and still match.
    strict = Engine("bert", "fp32", bert_runner)
    for feeds, result in zip(jobs, strict.run_many(jobs), strict=True):
        assert isinstance(result, dict)
        np.testing.assert_allclose(
            result["last_hidden_state"], bert_runner.run(feeds)["last_hidden_state"], atol=1e-6
        )


class _CountingRunner:
    """A real Runner whose runs are counted (how many ONNX runs a merge made)."""

    def __init__(self, runner: Runner) -> None:
        self.runner = runner
        self.inputs, self.outputs = runner.inputs, runner.outputs
        self.runs: list[tuple[int, ...]] = []

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.runs.append(feeds["input_ids"].shape)
        return self.runner.run(feeds)


def test_engine_keeps_a_padded_piece_apart_where_padding_costs_more_than_a_run(bert_runner: Runner) -> None:
    # A request's rows cut by length (text_pieces): 31 rows padded to 10 and one row of 48. Merged, the 31 would
    # each carry 38 pad tokens (1178, far over a run's cost): they run apart, as the library runs them.
    counting = _CountingRunner(bert_runner)
    engine = Engine("bert", "fp32", counting, {"input_ids": 0}, ("sequence_length",))  # type: ignore[arg-type]
    short, long = _bert_feeds([8] * 30 + [10], seed=1), _bert_feeds([48], seed=2)
    results = engine.run_many([short, long])
    assert sorted(counting.runs) == [(1, 48), (31, 10)]
    for feeds, result in zip((short, long), results, strict=True):
        assert isinstance(result, dict)
        np.testing.assert_allclose(
            result["last_hidden_state"], bert_runner.run(feeds)["last_hidden_state"], atol=1e-5
        )
    # requests of like length share one run
    counting.runs.clear()
    engine.run_many([_bert_feeds([9], seed=3), _bert_feeds([10], seed=4), _bert_feeds([5, 10], seed=5)])
    assert counting.runs == [(4, 10)]


def test_engine_isolates_a_bad_request_in_a_merged_batch(bert_runner: Runner) -> None:
    engine = Engine("bert", "fp32", bert_runner, {"input_ids": 0}, ("sequence_length",))
    good = _bert_feeds([5], seed=1)
    bad = _bert_feeds([5], seed=2)
    bad["input_ids"][0, 1] = 10_000  # past the vocabulary: onnxruntime's Gather fails
    results = engine.run_many([good, bad, good])
    assert isinstance(results[1], Exception)
    assert "input_ids" in str(results[1])
    for result in (results[0], results[2]):
        assert isinstance(result, dict)
        np.testing.assert_allclose(
            result["last_hidden_state"], bert_runner.run(good)["last_hidden_state"], atol=1e-6
        )


def test_batcher_fills_batches_to_max_then_sends_the_rest_after_the_delay() -> None:
    seen: list[list[int]] = []

    def run_many(jobs: Sequence[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray] | BaseException]:
        seen.append([int(job["x"][0, 0]) for job in jobs])
        return [{"y": job["x"] * 2} for job in jobs]

    async def scenario() -> list[np.ndarray]:
        batcher = DynamicBatcher(run_many, BatchOptions(max_batch=4, max_delay_ms=50, max_queue=8))
        results = await asyncio.gather(*(batcher.submit({"x": np.full((1, 2), i)}, 1) for i in range(5)))
        await batcher.aclose()
        return [r["y"] for r in results]

    results = asyncio.run(scenario())
    assert seen == [[0, 1, 2, 3], [4]]  # full at once, the remainder after the delay, in arrival order
    assert [int(r[0, 0]) for r in results] == [0, 2, 4, 6, 8]


def test_cli_refuses_a_bad_package_or_a_busy_port_with_exit_2(
    tiny_bert_package: Path, tmp_path: Path
) -> None:
    runner = CliRunner()
    missing = runner.invoke(edge, ["serve", str(tmp_path / "nope"), "--port", "0"])
    assert missing.exit_code == 2
    assert "error: model package" in missing.stderr
    assert "does not exist" in missing.stderr
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        taken = runner.invoke(edge, ["serve", str(tiny_bert_package), "--port", str(port)])
    assert taken.exit_code == 2
    assert f"cannot listen on 127.0.0.1:{port}" in taken.stderr
    bad_option = runner.invoke(edge, ["serve", str(tiny_bert_package), "--max-batch", "0"])
    assert bad_option.exit_code == 2


# -- the main server ------------------------------------------------------------------------------------


def test_health_metadata_and_config(server: Server, tiny_bert_package: Path, minilm_package: Path) -> None:
    bert, minilm = _name(tiny_bert_package), _name(minilm_package)
    assert _get(server, "/v2/health/live") == (200, {"live": True})
    assert _get(server, "/v2/health/ready") == (200, {"ready": True})
    status, meta = _get(server, "/v2")
    assert status == 200
    assert meta["name"] == "edge-toolkit"
    assert "binary_tensor_data" in meta["extensions"]
    status, model = _get(server, f"/v2/models/{bert}")
    assert status == 200
    assert model["versions"] == ["fp32", "int8"]
    assert model["platform"] == "onnxruntime_onnx"
    assert model["inputs"][0] == {"name": "input_ids", "datatype": "INT64", "shape": [-1, -1]}
    assert model["outputs"] == [{"name": "last_hidden_state", "datatype": "FP32", "shape": [-1, -1, 32]}]
    assert _get(server, f"/v2/models/{bert}/versions/fp32")[1] == model
    assert _get(server, f"/v2/models/{bert}/ready") == (200, {"name": bert, "ready": True})
    assert _get(server, f"/v2/models/{minilm}-text/versions/fp32/ready")[0] == 200
    status, text_model = _get(server, f"/v2/models/{minilm}-text")
    assert text_model["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
    assert text_model["outputs"] == [{"name": "embedding", "datatype": "FP32", "shape": [-1, 384]}]

    client = triton.InferenceServerClient(server.address)
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready(bert)
    assert client.is_model_ready(bert, "fp32")
    assert client.is_model_ready(bert, "int8")
    assert not client.is_model_ready(bert, "fp16")
    assert client.get_model_metadata(bert, "fp32")["name"] == bert
    config = client.get_model_config(bert)
    assert config["max_batch_size"] == 8
    assert config["input"][0] == {"name": "input_ids", "data_type": "TYPE_INT64", "dims": [-1]}
    index = client.get_model_repository_index()
    assert {(m["name"], m["version"]) for m in index} >= {
        (bert, "fp32"),
        (bert, "int8"),
        (f"{minilm}-text", "fp32"),
    }


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_tritonclient_results_equal_runner(
    server: Server, tiny_bert_package: Path, tiny_classifier_package: Path, bert_runner: Runner, binary: bool
) -> None:
    client = triton.InferenceServerClient(server.address)
    feeds = _bert_feeds([7, 4], seed=3)
    outputs = None if binary else [triton.InferRequestedOutput("last_hidden_state", binary_data=False)]
    result = client.infer(
        _name(tiny_bert_package), _triton_inputs(feeds, binary), outputs=outputs, request_id="t1"
    )
    response = result.get_response()
    assert response["id"] == "t1"
    assert response["model_version"] == "fp32"
    assert ("parameters" in response["outputs"][0]) == binary  # binary_data_size only for binary outputs
    np.testing.assert_allclose(result.as_numpy("last_hidden_state"), bert_runner.run(feeds)["last_hidden_state"], atol=1e-6)  # fmt: skip

    classifier = Runner(tiny_classifier_package, threads=1)
    result = client.infer(_name(tiny_classifier_package), _triton_inputs(feeds, binary), model_version="fp32")
    np.testing.assert_allclose(result.as_numpy("logits"), classifier.run(feeds)["logits"], atol=1e-6)


def test_plain_http_binary_and_json_equal_runner(
    server: Server, tiny_bert_package: Path, bert_runner: Runner
) -> None:
    feeds = _bert_feeds([6], seed=4)
    expected = bert_runner.run(feeds)["last_hidden_state"]
    path = f"/v2/models/{_name(tiny_bert_package)}/infer"
    # JSON in, JSON out (nested data lists are accepted as well as flat ones).
    payload = {
        "id": "plain-json",
        "inputs": [
            {"name": n, "datatype": "INT64", "shape": list(a.shape), "data": a.tolist()}
            for n, a in feeds.items()
        ],
    }
    status, body = _post_json(server, path, payload)
    assert status == 200
    assert body["id"] == "plain-json"
    (output,) = body["outputs"]
    assert output["datatype"] == "FP32"
    assert output["shape"] == list(expected.shape)
    np.testing.assert_allclose(
        np.array(output["data"], dtype=np.float32).reshape(output["shape"]), expected, atol=1e-6
    )
    # Binary in, binary out, built by hand from the extension's description.
    header = {
        "inputs": [
            {
                "name": n,
                "datatype": "INT64",
                "shape": list(a.shape),
                "parameters": {"binary_data_size": a.nbytes},
            }
            for n, a in feeds.items()
        ],
        "outputs": [{"name": "last_hidden_state", "parameters": {"binary_data": True}}],
    }
    head = json.dumps(header).encode()
    raw = head + b"".join(a.astype("<i8").tobytes() for a in feeds.values())
    status, headers, data = _request(
        server, "POST", path, raw, {"Inference-Header-Content-Length": str(len(head)), "Content-Type": "application/octet-stream"}
    )  # fmt: skip
    assert status == 200
    length = int(headers["inference-header-content-length"])
    reply = json.loads(data[:length])
    (output,) = reply["outputs"]
    assert output["parameters"]["binary_data_size"] == expected.nbytes == len(data) - length
    np.testing.assert_allclose(
        np.frombuffer(data[length:], dtype="<f4").reshape(output["shape"]), expected, atol=1e-6
    )


def test_text_models_equal_the_pipelines(
    server: Server, minilm_package: Path, tiny_classifier_package: Path
) -> None:
    client = triton.InferenceServerClient(server.address)
    texts = np.array(SENTENCES, dtype=object)
    embedder = TextEmbedding.load(minilm_package, threads=1)
    for binary in (True, False):
        text = triton.InferInput("text", [len(texts)], "BYTES")
        text.set_data_from_numpy(texts, binary_data=binary)
        result = client.infer(f"{_name(minilm_package)}-text", [text])
        np.testing.assert_allclose(result.as_numpy("embedding"), embedder.embed(SENTENCES), atol=1e-5)

    # One sentence per request, sent together: merged (padded to the longest) and split back server-side.
    def one(sentence: str) -> np.ndarray:
        status, body = _post_json(
            server,
            f"/v2/models/{_name(minilm_package)}-text/infer",
            {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": [sentence]}]},
        )
        assert status == 200
        return np.array(body["outputs"][0]["data"], dtype=np.float32)

    with ThreadPoolExecutor(len(SENTENCES)) as pool:
        separately = np.stack(list(pool.map(one, SENTENCES)))
    np.testing.assert_allclose(separately, embedder.embed(SENTENCES), atol=1e-5)

    classifier = TextClassifier.load(tiny_classifier_package, threads=1)
    text = triton.InferInput("text", [len(texts), 1], "BYTES")
    text.set_data_from_numpy(texts.reshape(-1, 1))
    result = client.infer(f"{_name(tiny_classifier_package)}-text", [text])
    expected = [top[0] for top in classifier.classify(SENTENCES)]
    assert [label.decode() for label in result.as_numpy("label")] == [c.label for c in expected]
    probabilities = np.array([[c.scores[name] for name in c.scores] for c in expected])
    np.testing.assert_allclose(result.as_numpy("probabilities"), probabilities, atol=1e-5)


def _error_cases(bert: str) -> list[tuple[str, str, bytes, dict[str, str], int, str]]:
    ok = _bert_feeds([4])
    inputs = [
        {"name": n, "datatype": "INT64", "shape": list(a.shape), "data": a.reshape(-1).tolist()}
        for n, a in ok.items()
    ]

    def body(**changes: Any) -> bytes:
        changed = [dict(i) for i in inputs]
        for key, value in changes.items():
            changed[0][key] = value
        return json.dumps({"inputs": changed}).encode()

    infer = f"/v2/models/{bert}/infer"
    big = json.dumps({"inputs": inputs, "pad": "x" * 300_000}).encode()
    mismatched = [dict(i) for i in inputs]
    mismatched[1] = {"name": "attention_mask", "datatype": "INT64", "shape": [1, 3], "data": [1, 1, 1]}
    binary_inputs = [
        {"name": n, "datatype": "INT64", "shape": list(a.shape), "parameters": {"binary_data_size": a.nbytes}}
        for n, a in ok.items()
    ]
    head = json.dumps({"inputs": binary_inputs}).encode()
    return [
        ("malformed JSON", infer, b'{"inputs": [', {}, 400, "not valid JSON"),
        ("not an object", infer, b"[1, 2]", {}, 400, "must be a JSON object"),
        ("unknown input name", infer, body(name="ids"), {}, 400, "unknown input 'ids'"),
        ("missing input", infer, json.dumps({"inputs": inputs[:2]}).encode(), {}, 400, "missing input 'token_type_ids'"),
        ("wrong datatype", infer, body(datatype="FP32", data=[1.0] * 4), {}, 400, "expected datatype INT64, got FP32"),
        ("unknown datatype", infer, body(datatype="BF16"), {}, 400, "BF16"),
        ("wrong rank", infer, body(shape=[4]), {}, 400, "expected shape [-1, -1]"),
        ("data count", infer, body(shape=[1, 5]), {}, 400, "needs 5 elements, data has 4"),
        ("float data for INT64", infer, body(data=[1.5, 2, 3, 4]), {}, 400, "INT64 data must be integers"),
        ("shared dim disagrees", infer, json.dumps({"inputs": mismatched}).encode(), {}, 400, "dimension 'sequence_length'"),
        ("unknown output", infer, json.dumps({"inputs": inputs, "outputs": [{"name": "nope"}]}).encode(), {}, 400, "no output 'nope'"),
        ("binary size past the end", infer, head, {"Inference-Header-Content-Length": str(len(head))}, 400, "runs past the end"),
        ("header length too long", infer, body(), {"Inference-Header-Content-Length": "99999"}, 400, "Inference-Header-Content-Length"),
        ("unknown model", "/v2/models/nope/infer", body(), {}, 404, "model 'nope' is not served"),
        ("unknown version", f"/v2/models/{bert}/versions/fp16/infer", body(), {}, 404, "has no version 'fp16'"),
        ("unknown model metadata", "/v2/models/nope", b"", {}, 404, "not served"),
        ("unknown path", "/v3/anything", b"", {}, 404, "no endpoint"),
        ("body too large", infer, big, {}, 413, "over the 262144-byte limit"),
    ]  # fmt: skip


def test_every_error_case_returns_its_code_and_a_json_error(server: Server, tiny_bert_package: Path) -> None:
    bert = _name(tiny_bert_package)
    for what, path, body, headers, code, message in _error_cases(bert):
        method = "POST" if path.endswith("/infer") else "GET"
        status, response_headers, data = _request(
            server, method, path, body if method == "POST" else None, headers
        )
        assert status == code, (what, status, data)
        assert response_headers["content-type"] == "application/json", what
        error = json.loads(data)
        assert set(error) == {"error"}, (what, error)
        assert message in error["error"], (what, error)
    # tritonclient surfaces the same errors as exceptions carrying the status and the message.
    client = triton.InferenceServerClient(server.address)
    feeds = _bert_feeds([4])
    feeds["input_ids"] = feeds["input_ids"].astype(np.int32)
    with pytest.raises(triton.InferenceServerException) as caught:
        client.infer(bert, _triton_inputs(feeds, True))
    assert caught.value.status() == "400"
    assert "expected datatype INT64, got INT32" in caught.value.message()


def test_errors_are_counted_by_model_and_code(server: Server, tiny_bert_package: Path) -> None:
    """Every 400 of the error cases shows in /metrics (one process: one registry)."""
    bert = _name(tiny_bert_package)
    before = _metric(server, "edge_request_errors_total", model=bert, code="400")
    bad_requests = [case for case in _error_cases(bert) if case[4] == 400 and case[1].endswith("/infer")]
    assert len(bad_requests) >= 5
    for _what, path, body, headers, _code, _message in bad_requests:
        assert _request(server, "POST", path, body, headers)[0] == 400
    after = _metric(server, "edge_request_errors_total", model=bert, code="400")
    assert after - before == len(bad_requests)


def test_concurrent_requests_batch_and_equal_unbatched_runs(
    server: Server, tiny_bert_package: Path, bert_runner: Runner
) -> None:
    bert = _name(tiny_bert_package)
    before = (
        _metric(server, "edge_batch_requests_sum", model=bert),
        _metric(server, "edge_batch_requests_count", model=bert),
    )
    jobs = [_bert_feeds([3 + (i * 5) % 14], seed=100 + i) for i in range(16)]
    start = threading.Barrier(len(jobs))

    def call(feeds: dict[str, np.ndarray]) -> np.ndarray:
        body = encode_request(feeds, binary=True)
        start.wait()
        status, headers, data = _request(
            server, "POST", f"/v2/models/{bert}/infer", body.body, body.headers()
        )
        assert status == 200, data
        _, outputs = decode_response(data, int(headers["inference-header-content-length"]))
        return outputs["last_hidden_state"]

    with ThreadPoolExecutor(len(jobs)) as pool:
        results = list(pool.map(call, jobs))
    for feeds, result in zip(jobs, results, strict=True):
        alone = bert_runner.run(feeds)["last_hidden_state"]
        assert result.shape == alone.shape
        np.testing.assert_allclose(result, alone, atol=1e-5)
    requests = _metric(server, "edge_batch_requests_sum", model=bert) - before[0]
    batches = _metric(server, "edge_batch_requests_count", model=bert) - before[1]
    assert requests == 16
    assert batches < requests  # some batch merged more than one request
    assert _metric(server, "edge_batch_size_bucket", model=bert, le="1.0") < _metric(
        server, "edge_batch_size_count", model=bert
    )


def test_versions_are_variants_and_dynamic_int8_is_never_merged(server: Server, bert_versions: Path) -> None:
    bert = _name(bert_versions)
    int8 = Runner(bert_versions, variant="int8", threads=1)
    jobs = [_bert_feeds([4 + i], seed=200 + i) for i in range(8)]

    def call(feeds: dict[str, np.ndarray]) -> np.ndarray:
        client = triton.InferenceServerClient(server.address)
        result = client.infer(bert, _triton_inputs(feeds, True), model_version="int8")
        assert result.get_response()["model_version"] == "int8"
        return result.as_numpy("last_hidden_state")

    before = _metric(server, "edge_batch_requests_count", model=bert, version="int8")
    with ThreadPoolExecutor(len(jobs)) as pool:
        results = list(pool.map(call, jobs))
    for feeds, result in zip(jobs, results, strict=True):
        # Dynamic quantization scales each tensor by its own range: merged, rows would change each other.
        np.testing.assert_allclose(result, int8.run(feeds)["last_hidden_state"], atol=1e-6)
    assert _metric(server, "edge_batch_requests_count", model=bert, version="int8") > before
    fp32 = Runner(bert_versions, threads=1)
    feeds = jobs[0]
    default = triton.InferenceServerClient(server.address).infer(bert, _triton_inputs(feeds, True))
    assert default.get_response()["model_version"] == "fp32"
    np.testing.assert_allclose(
        default.as_numpy("last_hidden_state"), fp32.run(feeds)["last_hidden_state"], atol=1e-6
    )
    assert not np.allclose(
        results[0], default.as_numpy("last_hidden_state"), atol=1e-6
    )  # really another model


def test_load_of_400_requests_from_16_clients_loses_nothing(server: Server, tiny_bert_package: Path) -> None:
    bert = _name(tiny_bert_package)
    host, port = server.address.rsplit(":", 1)
    total, clients = 400, 16
    answers: dict[str, int] = {}
    errors: list[str] = []
    lock = threading.Lock()

    def client(index: int) -> None:
        connection = http.client.HTTPConnection(host, int(port), timeout=60)
        for n in range(index, total, clients):
            feeds = _bert_feeds([3 + n % 9], seed=n)
            body = encode_request(feeds, binary=n % 2 == 0, binary_output=n % 2 == 0, request_id=f"req-{n}")
            connection.request("POST", f"/v2/models/{bert}/infer", body.body, body.headers())
            response = connection.getresponse()
            data = response.read()
            if response.status != 200:
                with lock:
                    errors.append(f"{n}: {response.status} {data[:200]!r}")
                continue
            length = response.getheader("Inference-Header-Content-Length")
            header, outputs = decode_response(data, int(length) if length else None)
            assert outputs["last_hidden_state"].shape == (1, 3 + n % 9, 32)
            with lock:
                answers[header["id"]] = answers.get(header["id"], 0) + 1
        connection.close()

    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(client, range(clients)))
    assert errors == []
    assert answers == {f"req-{n}": 1 for n in range(total)}


# -- limits: a queue that never fills, and shutdown ----------------------------------------------------


def _held_request(server: Server, bert: str, request_id: str) -> tuple[int, Any]:
    feeds = _bert_feeds([5])
    payload = {
        "id": request_id,
        "inputs": [{"name": n, "datatype": "INT64", "shape": list(a.shape), "data": a.reshape(-1).tolist()} for n, a in feeds.items()],
    }  # fmt: skip
    return _post_json(server, f"/v2/models/{bert}/infer", payload)


def test_full_queue_answers_503_and_waiting_requests_time_out_with_504(
    tiny_bert_package: Path, tmp_path: Path
) -> None:
    bert = _name(tiny_bert_package)
    args = ["--max-batch", "64", "--max-delay-ms", "60000", "--max-queue", "2", "--timeout-ms", "1500"]
    with _running([tiny_bert_package], args, tmp_path) as held, ThreadPoolExecutor(2) as pool:
        waiting = [pool.submit(_held_request, held, bert, f"w{i}") for i in range(2)]
        _wait_for(lambda: _metric(held, "edge_queue_depth", model=bert) == 2, "two queued requests")
        status, body = _held_request(held, bert, "third")
        assert status == 503
        assert "--max-queue" in body["error"]
        for future in waiting:
            status, body = future.result(timeout=60)
            assert status == 504
            assert "did not answer within 1.5 s" in body["error"]
        assert _metric(held, "edge_queue_depth", model=bert) == 0
        assert _metric(held, "edge_requests_total", model=bert, code="503") == 1
        assert _metric(held, "edge_requests_total", model=bert, code="504") == 2


def test_sigterm_finishes_in_flight_requests_and_exits_0(
    tiny_bert_package: Path, bert_runner: Runner, tmp_path: Path
) -> None:
    bert = _name(tiny_bert_package)
    server = _start([tiny_bert_package], ["--max-batch", "8", "--max-delay-ms", "2000"], tmp_path)
    try:
        with ThreadPoolExecutor(3) as pool:
            waiting = [pool.submit(_held_request, server, bert, f"s{i}") for i in range(3)]
            _wait_for(lambda: _metric(server, "edge_queue_depth", model=bert) == 3, "three queued requests")
            server.process.send_signal(signal.SIGTERM)
            answers = [f.result(timeout=60) for f in waiting]
        expected = bert_runner.run(_bert_feeds([5]))["last_hidden_state"]
        for index, (status, body) in enumerate(answers):
            assert status == 200
            assert body["id"] == f"s{index}"
            data = np.array(body["outputs"][0]["data"], dtype=np.float32).reshape(expected.shape)
            np.testing.assert_allclose(data, expected, atol=1e-5)
        assert server.process.wait(timeout=60) == 0
        assert "stopped (SIGTERM)" in server.log.read_text(encoding="utf-8")
    finally:
        server.stop()


def test_struct_layout_of_bytes_tensors_matches_tritonclient() -> None:
    from tritonclient.utils import serialize_byte_tensor

    from toolkit.serve.kserve.protocol import serialize_bytes

    texts = np.array(["a", "héllo", ""], dtype=object)
    assert serialize_bytes(texts) == serialize_byte_tensor(texts).item()
    assert serialize_bytes(texts)[:5] == struct.pack("<I", 1) + b"a"
