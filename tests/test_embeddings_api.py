"""``POST /v1/embeddings``: the official `openai` client against a real `edge serve` of MiniLM, each answer
equal to `TextEmbedding.embed`; limits, errors, truncation, the API key and shared batching."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from serve_process import ServeProcess, metric_sum, post_json, start_serve

from toolkit.manifest import ModelPackage
from toolkit.preprocess import l2_normalize
from toolkit.tasks.embed import TextEmbedding

TEXTS = ["a cat sat on the mat", "edge inference on a small board", "the quick brown fox"]
LONG_TEXT = " ".join(["retrieval augmented generation needs long documents"] * 80)


@pytest.fixture(scope="module")
def embedder(minilm_package: Path) -> TextEmbedding:
    return TextEmbedding.load(minilm_package)


@pytest.fixture(scope="module")
def server(minilm_package: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    process = start_serve(
        [minilm_package], ["--threads", "1", "--max-delay-ms", "40"], tmp_path_factory.mktemp("serve")
    )
    yield process
    assert process.stop() == 0


@pytest.fixture(scope="module")
def model_name(minilm_package: Path) -> str:
    return ModelPackage.open(minilm_package).manifest.name


def _client(server: ServeProcess) -> Any:
    from openai import OpenAI

    return OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(l2_normalize(a) * l2_normalize(b), axis=-1)


def test_openai_client_embeds_a_string_and_a_list_as_the_library_does(
    server: ServeProcess, model_name: str, embedder: TextEmbedding
) -> None:
    client = _client(server)
    expected = embedder.embed(TEXTS)
    one = client.embeddings.create(model=model_name, input=TEXTS[0])
    assert len(one.data) == 1
    assert _cosines(np.array([one.data[0].embedding]), expected[:1]).min() >= 1 - 1e-6
    many = client.embeddings.create(model=model_name, input=TEXTS, encoding_format="float")
    assert [d.index for d in many.data] == [0, 1, 2]
    got = np.array([d.embedding for d in many.data], dtype=np.float32)
    assert got.shape == expected.shape
    assert _cosines(got, expected).min() >= 1 - 1e-6
    counts = [len(ids) for ids, _ in embedder.task.data.tokenizer.encode(TEXTS)]
    assert many.usage.prompt_tokens == sum(counts)
    assert many.usage.total_tokens == sum(counts)


def test_token_arrays_base64_and_dimensions(
    server: ServeProcess, model_name: str, embedder: TextEmbedding
) -> None:
    client = _client(server)
    expected = embedder.embed(TEXTS)
    ids = [list(row) for row, _ in embedder.task.data.tokenizer.encode(TEXTS)]
    from_ids = client.embeddings.create(model=model_name, input=ids, encoding_format="float")
    got = np.array([d.embedding for d in from_ids.data], dtype=np.float32)
    assert _cosines(got, expected).min() >= 1 - 1e-6
    single = client.embeddings.create(model=model_name, input=ids[1], encoding_format="float")
    assert _cosines(np.array([single.data[0].embedding]), expected[1:2]).min() >= 1 - 1e-6

    encoded = client.embeddings.create(model=model_name, input=TEXTS, encoding_format="base64")
    decoded = np.stack([np.frombuffer(base64.b64decode(d.embedding), dtype="<f4") for d in encoded.data])
    assert _cosines(decoded, expected).min() >= 1 - 1e-6
    assert np.abs(decoded - expected).max() < 1e-5

    short = client.embeddings.create(model=model_name, input=TEXTS, dimensions=64, encoding_format="float")
    got = np.array([d.embedding for d in short.data], dtype=np.float32)
    assert got.shape == (3, 64)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    assert _cosines(got, expected[:, :64]).min() >= 1 - 1e-6


def test_long_inputs_are_truncated_as_the_library_does_and_said_so(
    server: ServeProcess, model_name: str, embedder: TextEmbedding
) -> None:
    status, body = post_json(
        f"{server.url}/v1/embeddings", {"model": model_name, "input": [TEXTS[0], LONG_TEXT]}
    )
    assert status == 200, body
    assert body["usage"]["truncated_inputs"] == [1]
    got = np.array([d["embedding"] for d in body["data"]], dtype=np.float32)
    # TextEmbedding cuts to the model's positions exactly as sentence-transformers does (tests/test_minilm.py)
    assert _cosines(got, embedder.embed([TEXTS[0], LONG_TEXT])).min() >= 1 - 1e-6
    limit = embedder.task.data.tokenizer.max_length
    ids = list(range(1000, 1000 + limit + 20))
    status, body = post_json(f"{server.url}/v1/embeddings", {"model": model_name, "input": [ids]})
    assert status == 200, body
    assert body["usage"]["truncated_inputs"] == [0]
    assert body["usage"]["prompt_tokens"] == limit


@pytest.mark.parametrize(
    ("body", "status", "names"),
    [
        ({"input": "hi"}, 400, "'model'"),
        ({"model": [], "input": "hi"}, 400, "'model'"),
        ({"model": "nope", "input": "hi"}, 404, "not an embedding model"),
        ({"input": []}, 400, "'input' is empty"),
        ({"input": ["a", 1]}, 400, "not a mix"),
        ({"input": [[1, 2], []]}, 400, "'input[1]'"),
        ({"input": [[1, 2.5]]}, 400, "'input[0]'"),
        ({"input": {"text": "a"}}, 400, "'input' must be"),
        ({"input": [[10**9]]}, 400, "outside the model's vocabulary"),
        ({"input": "a", "encoding_format": "int8"}, 400, "'encoding_format'"),
        ({"input": "a", "dimensions": 0}, 400, "'dimensions'"),
        ({"input": "a", "dimensions": True}, 400, "'dimensions'"),
        ({"input": "a", "dimensions": 385}, 400, "over model"),
        ({"input": "a", "user": 5}, 400, "'user'"),
        ({"input": ["a"] * 65}, 413, "65 inputs"),
    ],
)
def test_bad_requests_get_one_line_openai_errors(
    server: ServeProcess, model_name: str, body: dict[str, Any], status: int, names: str
) -> None:
    if "model" not in body and names != "'model'":
        body = {"model": model_name, **body}
    got, answer = post_json(f"{server.url}/v1/embeddings", body)
    assert got == status, answer
    error = answer["error"]
    assert names in error["message"]
    assert "\n" not in error["message"]
    assert "Traceback" not in error["message"]
    assert error["type"] == "invalid_request_error"


def test_not_json_and_lone_surrogates_are_400(server: ServeProcess, model_name: str) -> None:
    status, answer = post_json(f"{server.url}/v1/embeddings", b"{not json")
    assert status == 400
    assert "not JSON" in answer["error"]["message"]
    # json.dumps writes the lone surrogate as a \\ud800 escape: legal JSON, text no codec can encode
    status, answer = post_json(f"{server.url}/v1/embeddings", {"model": model_name, "input": "a\ud800b"})
    assert status == 400, answer
    assert "lone surrogate" in answer["error"]["message"]


def test_concurrent_clients_share_batch_runs_and_are_counted(
    server: ServeProcess, model_name: str, embedder: TextEmbedding
) -> None:
    runs_before = metric_sum(server, "edge_batch_requests_count", model_name)
    requests_before = metric_sum(server, "edge_batch_requests_sum", model_name)
    answered_before = metric_sum(server, "edge_requests_total", model_name)
    client = _client(server)
    texts = [f"sentence number {i} about edge devices" for i in range(16)]
    with ThreadPoolExecutor(16) as pool:
        answers = list(
            pool.map(
                lambda t: client.embeddings.create(model=model_name, input=t, encoding_format="float"), texts
            )
        )
    got = np.array([a.data[0].embedding for a in answers], dtype=np.float32)
    assert _cosines(got, embedder.embed(texts)).min() >= 1 - 1e-6
    runs = metric_sum(server, "edge_batch_requests_count", model_name) - runs_before
    merged = metric_sum(server, "edge_batch_requests_sum", model_name) - requests_before
    assert merged == 16
    assert runs < 16, "16 concurrent requests within --max-delay-ms 40 should share runs"
    assert metric_sum(server, "edge_requests_total", model_name) - answered_before == 16


def test_no_truncate_api_key_and_model_list(minilm_package: Path, model_name: str) -> None:
    from fastapi.testclient import TestClient

    from toolkit.serve.app import build_serving_app
    from toolkit.serve.options import ServeOptions
    from toolkit.serve.registry import LoadOptions

    key = "k" * 24
    options = ServeOptions(api_key=key, truncate=False)
    serving = build_serving_app([minilm_package], LoadOptions(threads=1), options)
    auth = {"Authorization": f"Bearer {key}"}
    with TestClient(serving.app) as client:
        assert client.post("/v1/embeddings", json={"model": model_name, "input": "a"}).status_code == 401
        listed = client.get("/v1/models", headers=auth)
        assert [m["id"] for m in listed.json()["data"]] == [model_name]
        ok = client.post("/v1/embeddings", json={"model": model_name, "input": "a"}, headers=auth)
        assert ok.status_code == 200, ok.text
        refused = client.post("/v1/embeddings", json={"model": model_name, "input": LONG_TEXT}, headers=auth)
        assert refused.status_code == 400
        assert "--no-truncate" in refused.json()["error"]["message"]


def test_a_package_with_variants_embeds_with_its_default_version(
    minilm_package: Path, tmp_path: Path
) -> None:
    import shutil

    from fastapi.testclient import TestClient

    from converters.quantization import quantize
    from toolkit.serve.app import build_serving_app
    from toolkit.serve.options import ServeOptions
    from toolkit.serve.registry import LoadOptions

    versions = Path(shutil.copytree(minilm_package, tmp_path / "minilm"))
    quantize(versions, "dynamic-int8")
    package = ModelPackage.open(versions)
    assert set(package.manifest.variants) == {"fp32", "int8"}
    fp32 = TextEmbedding.load(versions, variant="fp32").embed(TEXTS)
    int8 = TextEmbedding.load(versions, variant="int8").embed(TEXTS)
    assert float(np.abs(int8 - fp32).max()) > 1e-4  # the two versions are told apart below
    serving = build_serving_app([versions], LoadOptions(threads=1), ServeOptions())
    with TestClient(serving.app) as client:
        answer = client.post("/v1/embeddings", json={"model": package.manifest.name, "input": TEXTS})
    assert answer.status_code == 200, answer.text
    served = np.array([item["embedding"] for item in answer.json()["data"]], dtype=np.float32)
    np.testing.assert_allclose(served, fp32, atol=1e-6)


def test_array_json_bodies_give_the_stdlib_floats_with_or_without_orjson(embedder: TextEmbedding) -> None:
    import json

    from toolkit.serve.responses import json_bytes

    vectors = embedder.embed(TEXTS)
    vectors[0, :3] = [1e-5, -3e-7, 123456789.0]  # exponents, which the two spell differently
    content = {"data": [{"index": i, "embedding": row} for i, row in enumerate(vectors.astype(np.float64))]}
    # what the route sent before arrays: each float32 value as a Python float, through the stdlib
    expected = json.loads(
        json.dumps({"data": [{"index": i, "embedding": r.tolist()} for i, r in enumerate(vectors)]})
    )
    for fast in (True, False):
        assert json.loads(json_bytes(content, (vectors,), fast=fast)) == expected
    vectors[1, 5] = np.nan
    for fast in (True, False):
        with pytest.raises(ValueError, match="not JSON compliant"):
            json_bytes(content, (vectors,), fast=fast)


def test_encodings_one_by_one_equal_encode_batch(embedder: TextEmbedding) -> None:
    from toolkit.preprocess import SERIAL_ENCODE_MAX

    tokenizer = embedder.task.data.tokenizer
    few = [*TEXTS, LONG_TEXT]  # the long one is cut to the model's positions either way
    many = few * (SERIAL_ENCODE_MAX // len(few) + 1)
    for texts in (few, many):
        got, expected = tokenizer.encodings(texts), tokenizer.tokenizer.encode_batch(texts)
        assert [(e.ids, e.type_ids, len(e.overflowing)) for e in got] == [
            (e.ids, e.type_ids, len(e.overflowing)) for e in expected
        ]
    pairs = tokenizer.pair_encodings(TEXTS[0], few)
    expected = tokenizer.tokenizer.encode_batch([(TEXTS[0], text) for text in few])
    assert [(e.ids, e.type_ids) for e in pairs] == [(e.ids, e.type_ids) for e in expected]
    assert len(set(pairs[1].type_ids)) == 2  # a real pair: the document's tokens have type id 1
