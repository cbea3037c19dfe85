"""The ``rerank`` task: cross-encoders converted, scored as sentence-transformers' ``CrossEncoder.predict`` scores
them, quantized by ranking agreement, run by ``edge run --query --doc``, and served Cohere's way on
``/v1/rerank`` (the official `cohere` client against a real `edge serve`)."""

from __future__ import annotations

import json
import re
import shutil
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import _save_tiny_bert, build_offline_model
from serve_process import ServeProcess, metric_sum, post_json, start_serve

from converters import ConvertOptions, convert
from converters.accuracy import compare_variant
from toolkit import Reranker, TextClassifier
from toolkit.cli import edge
from toolkit.errors import BadInputError, BadModelError
from toolkit.manifest import ModelPackage
from toolkit.tasks.accuracy import kendall_tau

QUERY = "where does the quick brown fox sleep"
DOCUMENTS = [
    "the quick brown fox jumps over the lazy dog",
    "a cat sat on the mat",
    "edge model run on a small device",
    "hello world " * 40,  # longer than the 64 positions with the query: cut longest-first
    "the lazy dog is brown",
    "fast onnx image text model",
]
IDENTITY = "torch.nn.modules.linear.Identity"


@pytest.fixture(scope="module")
def cross_encoder_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random BERT cross-encoder with one logit whose config names the Identity activation, as
    ms-marco-MiniLM-L6-v2's does; weights drawn wide so documents get distinct scores."""
    return _save_tiny_bert(
        tmp_path_factory.mktemp("tiny-cross-encoder"),
        "BertForSequenceClassification",
        seed=5,
        num_labels=1,
        initializer_range=0.4,
        sentence_transformers={"activation_fn": IDENTITY},
    )


@pytest.fixture(scope="module")
def cross_encoder_package(cross_encoder_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`cross_encoder_dir` converted with no --task: one logit and a CrossEncoder config make it ``rerank``."""
    return convert(str(cross_encoder_dir), tmp_path_factory.mktemp("packages") / "tiny-reranker").path


@pytest.fixture(scope="module")
def standin_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_offline_model("ms-marco-minilm-l6", tmp_path_factory.mktemp("ms-marco-standin"))


@pytest.fixture(scope="module")
def standin_package(standin_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("packages") / "ms-marco"
    return convert(str(standin_dir), out, ConvertOptions(recipe="ms-marco-minilm-l6")).path


def _cross_encoder_scores(folder: Path, query: str, documents: list[str], batch_size: int = 32) -> np.ndarray:
    from sentence_transformers import CrossEncoder

    model = CrossEncoder(str(folder), device="cpu")
    return np.asarray(model.predict([(query, d) for d in documents], batch_size=batch_size))


# --- conversion and the library -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "package", "activation"),
    [
        ("cross_encoder_dir", "cross_encoder_package", "identity"),
        ("standin_dir", "standin_package", "sigmoid"),
    ],
)
def test_scores_equal_cross_encoder_predict(
    request: pytest.FixtureRequest, source: str, package: str, activation: str
) -> None:
    folder, path = request.getfixturevalue(source), request.getfixturevalue(package)
    manifest = ModelPackage.open(path).manifest
    assert manifest.task == "rerank"
    assert manifest.preprocessing is not None
    assert manifest.preprocessing.activation == activation
    assert manifest.variants["fp32"].validation.passed
    expected = _cross_encoder_scores(folder, QUERY, DOCUMENTS)
    # distinct scores, so agreeing within 1e-5 says something
    assert np.ptp(expected) > 1e-2
    if activation == "sigmoid":
        assert ((expected > 0) & (expected < 1)).all()
    with Reranker.load(path) as reranker:
        for batch_size in (32, 4):  # one batch, and batches padded to different lengths
            got = reranker.scores(QUERY, DOCUMENTS, batch_size=batch_size)
            assert got.dtype == np.float32
            assert got.shape == (len(DOCUMENTS),)
            np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)
        ranking = reranker.rank(QUERY, DOCUMENTS)
        assert [r.index for r in ranking] == [int(i) for i in np.argsort(-expected, kind="stable")]
        for (index, score), place in zip(ranking, ranking, strict=True):  # unpacks as (index, score)
            assert (index, score) == (place.index, place.score)
            assert abs(score - expected[index]) < 1e-5
        assert [r.index for r in reranker.rank(QUERY, DOCUMENTS, top_n=2)] == [r.index for r in ranking[:2]]
        assert len(reranker.rank(QUERY, DOCUMENTS, top_n=100)) == len(DOCUMENTS)
        assert reranker.rank(QUERY, []) == []


def test_bad_arguments_and_packages(cross_encoder_package: Path, tiny_classifier_package: Path) -> None:
    with Reranker.load(cross_encoder_package) as reranker:
        for top_n in (0, -1, True, 1.5):
            with pytest.raises(BadInputError, match="top_n must be a positive integer"):
                reranker.rank(QUERY, DOCUMENTS, top_n=top_n)  # type: ignore[arg-type]
        with pytest.raises(BadInputError, match="wrap it as"):
            reranker.rank(QUERY, "one document")
        with pytest.raises(BadInputError, match=r"documents\[1\] is int"):
            reranker.rank(QUERY, ["a", 3])  # type: ignore[list-item]
        with pytest.raises(BadInputError, match="query must be a string"):
            reranker.rank(["a"], DOCUMENTS)  # type: ignore[arg-type]
    with pytest.raises(BadModelError, match="has task 'classify', not 'rerank'"):
        Reranker.load(tiny_classifier_package)
    with pytest.raises(BadModelError, match="has task 'rerank', not 'classify'"):
        TextClassifier.load(cross_encoder_package)


def test_a_multi_label_classifier_is_refused_as_a_reranker(tiny_classifier_dir: Path, tmp_path: Path) -> None:
    package = convert(str(tiny_classifier_dir), tmp_path / "three", ConvertOptions(task="rerank")).path
    with pytest.raises(BadModelError, match="a reranker gives one"):
        Reranker.load(package)


def test_kendall_tau() -> None:
    a = np.array([0.1, 0.5, 0.3, 0.9])
    assert kendall_tau(a, a * 2 + 1) == pytest.approx(1.0)
    assert kendall_tau(a, -a) == pytest.approx(-1.0)
    assert kendall_tau(a, np.array([0.1, 0.3, 0.5, 0.9])) == pytest.approx(2 / 3)


def test_quantized_variant_is_checked_by_ranking_agreement(
    cross_encoder_package: Path, tmp_path: Path
) -> None:
    from converters.quantization import quantize

    copy = Path(shutil.copytree(cross_encoder_package, tmp_path / "reranker"))
    result = quantize(ModelPackage.open(copy), "dynamic-int8")
    assert result.variant is not None
    validation = result.variant.validation
    assert validation is not None
    assert validation.metric == "ranking_agreement"
    assert 0.0 <= validation.value <= 1.0
    cases = dict(case.split(" ", 1) for case in validation.cases)
    assert set(cases) == {"top1_agreement", "mean_kendall_tau", "min_kendall_tau", "max_score_diff"}
    assert -1.0 <= float(cases["min_kendall_tau"]) <= float(cases["mean_kendall_tau"]) <= 1.0
    # the report itself: fp32 against fp32 agrees exactly, an int8 copy differs in its scores
    same = compare_variant(ModelPackage.open(copy), copy / "model.onnx")
    assert same.score == 1.0
    assert same.details["mean_kendall_tau"] == 1.0
    assert same.details["max_score_diff"] == 0
    assert same.samples == 32  # held-out lists of one query and eight documents
    int8 = compare_variant(ModelPackage.open(copy), copy / result.variant.file)
    assert int8.details["max_score_diff"] > 0
    with Reranker.load(copy, variant=result.variant.name) as reranker:
        assert len(reranker.rank(QUERY, DOCUMENTS)) == len(DOCUMENTS)


# --- edge run -------------------------------------------------------------------------------------------


def test_edge_run_prints_the_ranking(cross_encoder_package: Path) -> None:
    documents = DOCUMENTS[:3]
    args = ["run", str(cross_encoder_package), "--query", QUERY]
    for document in documents:
        args += ["--doc", document]
    printed = CliRunner().invoke(edge, args)
    assert printed.exit_code == 0, printed.output
    with Reranker.load(cross_encoder_package) as reranker:
        ranking = reranker.rank(QUERY, documents)
    lines = [line for line in printed.output.splitlines() if re.match(r"\s+\d\. ", line)]
    assert [int(re.search(r"\[(\d+)\]", line).group(1)) for line in lines] == [r.index for r in ranking]  # type: ignore[union-attr]
    assert f"{ranking[0].score:.4f}" in lines[0]

    as_json = CliRunner().invoke(edge, [*args, "--json"])
    assert as_json.exit_code == 0, as_json.output
    data = json.loads(as_json.output)
    assert data["task"] == "rerank"
    assert [r["index"] for r in data["ranking"]] == [r.index for r in ranking]
    assert data["ranking"][0]["score"] == pytest.approx(ranking[0].score)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--doc", "a"], "pass --query TEXT too"),
        (["--query", "a"], "pass each with --doc TEXT"),
        (["--text", "a"], "has no text pipeline"),
        (["--query", "a", "--doc", "b", "--text", "c"], "pass one of"),
    ],
)
def test_edge_run_refuses_what_does_not_rank(
    cross_encoder_package: Path, args: list[str], message: str
) -> None:
    result = CliRunner().invoke(edge, ["run", str(cross_encoder_package), *args])
    assert result.exit_code == 2
    assert message in result.output
    assert "Traceback" not in result.output


def test_edge_run_query_on_another_task(tiny_classifier_package: Path) -> None:
    result = CliRunner().invoke(edge, ["run", str(tiny_classifier_package), "--query", "a", "--doc", "b"])
    assert result.exit_code == 2
    assert "has no query pipeline (rerank have); run it with --text" in result.output


# --- the server -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(cross_encoder_package: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    process = start_serve(
        [cross_encoder_package],
        ["--threads", "1", "--max-delay-ms", "40", "--max-request-rows", "16"],
        tmp_path_factory.mktemp("serve"),
    )
    yield process
    assert process.stop() == 0


@pytest.fixture(scope="module")
def model_name(cross_encoder_package: Path) -> str:
    return ModelPackage.open(cross_encoder_package).manifest.name


@pytest.fixture(scope="module")
def expected(cross_encoder_package: Path) -> np.ndarray:
    with Reranker.load(cross_encoder_package) as reranker:
        return reranker.scores(QUERY, DOCUMENTS)


def test_cohere_client_reranks_as_the_library_does(
    server: ServeProcess, model_name: str, expected: np.ndarray
) -> None:
    import cohere

    order = [int(i) for i in np.argsort(-expected, kind="stable")]
    client = cohere.Client(api_key="unused", base_url=server.url, max_retries=0)
    answer = client.rerank(model=model_name, query=QUERY, documents=DOCUMENTS)
    assert [r.index for r in answer.results] == order
    np.testing.assert_allclose(
        [r.relevance_score for r in answer.results], expected[order], atol=1e-5, rtol=0
    )
    assert all(r.document is None for r in answer.results)
    assert answer.id
    assert answer.meta is not None
    assert answer.meta.api_version is not None

    top = client.rerank(
        model=model_name,
        query=QUERY,
        documents=[{"text": d} for d in DOCUMENTS],
        top_n=2,
        return_documents=True,
    )
    assert [r.index for r in top.results] == order[:2]
    assert [r.document.text for r in top.results] == [DOCUMENTS[i] for i in order[:2]]  # type: ignore[union-attr]

    v2 = cohere.ClientV2(api_key="unused", base_url=server.url, max_retries=0)
    again = v2.rerank(model=model_name, query=QUERY, documents=DOCUMENTS, top_n=3)
    assert [r.index for r in again.results] == order[:3]


def test_the_unversioned_route_and_usage(server: ServeProcess, model_name: str, expected: np.ndarray) -> None:
    status, body = post_json(
        f"{server.url}/rerank",
        {"model": model_name, "query": QUERY, "documents": DOCUMENTS[:2], "return_documents": True},
    )
    assert status == 200, body
    assert {r["index"]: r["relevance_score"] for r in body["results"]} == pytest.approx(
        {0: float(expected[0]), 1: float(expected[1])}, abs=1e-5
    )
    assert body["results"][0]["document"] == {"text": DOCUMENTS[body["results"][0]["index"]]}
    assert body["model"] == model_name
    assert body["usage"]["prompt_tokens"] > 0
    with urllib.request.urlopen(f"{server.url}/v1/models", timeout=30) as response:
        assert [m["id"] for m in json.loads(response.read())["data"]] == [model_name]


@pytest.mark.parametrize(
    ("body", "status", "names"),
    [
        ({"query": "q", "documents": ["a"]}, 400, "'model'"),
        ({"model": "nope", "query": "q", "documents": ["a"]}, 404, "not a rerank model"),
        ({"documents": ["a"]}, 400, "'query'"),
        ({"query": "", "documents": ["a"]}, 400, "'query'"),
        ({"query": "q"}, 400, "'documents'"),
        ({"query": "q", "documents": []}, 400, "'documents'"),
        ({"query": "q", "documents": "a"}, 400, "'documents'"),
        ({"query": "q", "documents": ["a", 5]}, 400, "'documents[1]'"),
        ({"query": "q", "documents": [{"title": "a"}]}, 400, "'documents[0]'"),
        ({"query": "q", "documents": ["a"], "top_n": 0}, 400, "'top_n'"),
        ({"query": "q", "documents": ["a"], "top_n": "2"}, 400, "'top_n'"),
        ({"query": "q", "documents": ["a"], "return_documents": "yes"}, 400, "'return_documents'"),
        ({"query": "q", "documents": ["a"] * 17}, 413, "17 documents"),
    ],
)
def test_bad_requests_get_one_line_errors(
    server: ServeProcess, model_name: str, body: dict[str, Any], status: int, names: str
) -> None:
    if "model" not in body and names != "'model'":
        body = {"model": model_name, **body}
    got, answer = post_json(f"{server.url}/v1/rerank", body)
    assert got == status, answer
    assert names in answer["message"]
    assert "\n" not in answer["message"]
    assert "Traceback" not in answer["message"]


def test_not_json_is_400(server: ServeProcess) -> None:
    status, answer = post_json(f"{server.url}/v1/rerank", b"{not json")
    assert status == 400
    assert "not JSON" in answer["message"]


def test_concurrent_clients_share_batch_runs_and_are_counted(
    server: ServeProcess, model_name: str, cross_encoder_package: Path
) -> None:
    runs_before = metric_sum(server, "edge_batch_requests_count", model_name)
    requests_before = metric_sum(server, "edge_batch_requests_sum", model_name)
    answered_before = metric_sum(server, "edge_requests_total", model_name)
    queries = [f"query {i} about a brown dog" for i in range(12)]

    def ask(query: str) -> list[float]:
        status, body = post_json(
            f"{server.url}/v1/rerank", {"model": model_name, "query": query, "documents": DOCUMENTS[:3]}
        )
        assert status == 200, body
        return [r["relevance_score"] for r in sorted(body["results"], key=lambda r: r["index"])]

    with ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(ask, queries))
    with Reranker.load(cross_encoder_package) as reranker:
        for query, scores in zip(queries, answers, strict=True):
            np.testing.assert_allclose(scores, reranker.scores(query, DOCUMENTS[:3]), atol=1e-5, rtol=0)
    assert metric_sum(server, "edge_batch_requests_sum", model_name) - requests_before == 12
    assert metric_sum(server, "edge_batch_requests_count", model_name) - runs_before < 12, "no run was shared"
    assert metric_sum(server, "edge_requests_total", model_name) - answered_before == 12


def test_api_key_and_token_limit(cross_encoder_package: Path, model_name: str) -> None:
    from fastapi.testclient import TestClient

    from toolkit.serve.app import build_serving_app
    from toolkit.serve.options import ServeOptions
    from toolkit.serve.registry import LoadOptions

    key = "k" * 24
    options = ServeOptions(api_key=key, max_request_tokens=100)
    serving = build_serving_app([cross_encoder_package], LoadOptions(threads=1), options)
    auth = {"Authorization": f"Bearer {key}"}
    body = {"model": model_name, "query": QUERY, "documents": DOCUMENTS[:2]}
    with TestClient(serving.app) as client:
        assert client.post("/v1/rerank", json=body).status_code == 401
        ok = client.post("/v1/rerank", json=body, headers=auth)
        assert ok.status_code == 200, ok.text
        long = client.post("/v1/rerank", json={**body, "documents": DOCUMENTS}, headers=auth)
        assert long.status_code == 413
        assert "100-token limit" in long.json()["message"]


def test_padding_groups_are_the_least_cost_runs_within_the_batch() -> None:
    import itertools
    import random

    from toolkit.preprocess import RUN_COST_ELEMENTS, padding_groups

    def cost(groups: list[list[int]], sizes: list[int], rows: list[int]) -> int:
        return sum(RUN_COST_ELEMENTS + sum(rows[i] for i in g) * max(sizes[i] for i in g) for g in groups)

    generator = random.Random(0)
    for _ in range(200):
        n = generator.randint(1, 8)
        sizes = [generator.randint(1, 60) for _ in range(n)]
        rows = [generator.randint(1, 6) for _ in range(n)]
        max_rows = generator.choice([None, 6, 10])
        groups = padding_groups(sizes, rows, max_rows)
        assert sorted(i for g in groups for i in g) == list(range(n))
        assert all(max_rows is None or len(g) == 1 or sum(rows[i] for i in g) <= max_rows for g in groups)
        order = sorted(range(n), key=sizes.__getitem__)
        # every cut of the size-sorted order (within the rows limit) costs at least as much
        for cuts in itertools.product([False, True], repeat=n - 1):
            other: list[list[int]] = [[order[0]]]
            for index, cut in zip(order[1:], cuts, strict=True):
                if cut:
                    other.append([index])
                else:
                    other[-1].append(index)
            if all(max_rows is None or len(g) == 1 or sum(rows[i] for i in g) <= max_rows for g in other):
                assert cost(groups, sizes, rows) <= cost(other, sizes, rows)
    # 31 pairs padded to 39 do not pay 9 tokens each to share a run with one pair of 48 (the rerank route's case)
    assert padding_groups([39, 48], rows=[31, 1]) == [[0], [1]]
    # a lone short row joins its neighbours rather than pay a run of its own; max_rows still cuts
    assert padding_groups([3, 16, 17, 18]) == [[0, 1, 2, 3]]
    assert padding_groups([3, 16, 17, 18], max_rows=2) == [[0, 1], [2, 3]]
