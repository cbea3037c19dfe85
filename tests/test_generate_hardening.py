"""The generation routes (OpenAI /v1, Triton generate) under hostile clients and careless users, against a real
`edge serve` of a tiny random Llama with 2,048 positions (issue 21): abandoned streams leave the batch,
wrong types are 400s naming the field, a generate-only server has health and metrics, oversized prompts and
stop lists are refused before they cost anything, shutdown ends every stream properly, and chat templates
render on a budget. Each request that could grow the server checks its RSS."""

from __future__ import annotations

import json
import signal
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from long_llama import build_long_llama
from serve_process import ServeProcess, start_serve
from test_generate import CHAT_TEMPLATE

from toolkit.decoding import GenerationOptions, LogitsChooser
from toolkit.errors import BadInputError, BadModelError
from toolkit.manifest import ModelPackage
from toolkit.serve.errors import public_message
from toolkit.serve.options import ServeOptions
from toolkit.tasks.generate import TextGenerator
from toolkit.tasks.generate.chat import TemplateBudget, render_chat

RSS_GROWTH_MB = 300
HOSTILE_TEMPLATE = "{{ messages|tojson(indent=10**9) }}"


@pytest.fixture(scope="module")
def long_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Llama with 2,048 positions that greedy decoding never ends early, converted."""
    return build_long_llama(tmp_path_factory.mktemp("long-llama"))


@pytest.fixture(scope="module")
def hostile_chat(long_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same model under another name, with a chat template that would render gigabytes."""
    import shutil

    copy = tmp_path_factory.mktemp("hostile") / "hostile"
    shutil.copytree(long_llama, copy)
    manifest = json.loads((copy / "edge.json").read_text(encoding="utf-8"))
    manifest["name"] = "hostile-chat"
    manifest["generation"]["chat_template"] = HOSTILE_TEMPLATE
    (copy / "edge.json").write_text(json.dumps(manifest), encoding="utf-8")
    return copy


@pytest.fixture(scope="module")
def served(
    long_llama: Path, hostile_chat: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServeProcess]:
    """`edge serve` of the two generate packages alone (no KServe model), default limits."""
    process = start_serve(
        [long_llama, hostile_chat], ["--threads", "1"], tmp_path_factory.mktemp("gen-serve")
    )
    try:
        yield process
    finally:
        process.stop()
        log = process.log.read_text(encoding="utf-8")
        assert "Traceback" not in log, log[-3000:]


def _name(package: Path) -> str:
    return ModelPackage.open(package).manifest.name


def _call(served: ServeProcess, path: str, body: Any = None, raw: bytes | None = None) -> tuple[int, Any]:
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    request = urllib.request.Request(served.url + path, data, {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            status, payload, kind = response.status, response.read(), response.headers.get("content-type", "")
    except urllib.error.HTTPError as exc:
        status, payload, kind = exc.code, exc.read(), exc.headers.get("content-type", "")
    if "json" in kind:
        return status, json.loads(payload)
    return status, payload.decode("utf-8")


def _rss_mb(served: ServeProcess) -> float:
    import psutil

    return psutil.Process(served.process.pid).memory_info().rss / 2**20


def _metric(served: ServeProcess, name: str, **labels: str) -> float:
    _status, text = _call(served, "/metrics")
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def _open_stream(served: ServeProcess, body: dict[str, Any], path: str = "/v1/completions") -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", served.port), timeout=60)
    data = json.dumps(body).encode()
    head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n"
    sock.sendall(head.encode() + data)
    return sock


def _read_all(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def _error_message(payload: Any) -> str:
    error = payload["error"]
    return error["message"] if isinstance(error, dict) else error


# -- row 1: abandoned streams and deadlines ------------------------------------------------------------------


def test_abandoned_streams_leave_the_batch_and_a_short_request_is_answered_at_once(
    served: ServeProcess, long_llama: Path
) -> None:
    name = _name(long_llama)
    before = _metric(served, "edge_abandoned_rows_total", model=name)
    rss = _rss_mb(served)
    body = {"model": name, "prompt": "hello there", "max_tokens": 2000, "temperature": 0, "stream": True}
    streams = [_open_stream(served, body) for _ in range(32)]
    for sock in streams:
        seen = b""
        while seen.count(b"data: ") < 3:
            seen += sock.recv(65536)
    for sock in streams:
        sock.close()
    whole = _open_stream(
        served, {**body, "stream": False}
    )  # a client that gives up waiting for a whole answer
    time.sleep(0.3)
    whole.close()
    deadline = time.monotonic() + 60
    while _metric(served, "edge_abandoned_rows_total", model=name) < before + 33:
        assert time.monotonic() < deadline, "the abandoned rows were not cancelled"
        time.sleep(0.05)
    started = time.perf_counter()
    status, answer = _call(served, "/v1/completions", {"model": name, "prompt": "hi", "max_tokens": 8})
    took = time.perf_counter() - started
    assert status == 200, answer
    assert answer["usage"]["completion_tokens"] == 8
    assert took < 1.0, f"an 8-token request took {took:.2f} s after 32 abandoned streams"
    assert _metric(served, "edge_requests_total", model=name, code="499") >= 1  # the one that did not stream
    assert _rss_mb(served) - rss < RSS_GROWTH_MB


def test_a_request_past_its_deadline_leaves_the_batch_with_504(long_llama: Path) -> None:
    from fastapi.testclient import TestClient

    from toolkit.serve.app import build_serving_app
    from toolkit.serve.registry import LoadOptions

    serving = build_serving_app([long_llama], LoadOptions(threads=1), ServeOptions(timeout_s=0.05))
    name = _name(long_llama)
    with TestClient(serving.app) as client:
        late = client.post("/v1/completions", json={"model": name, "prompt": "hi", "max_tokens": 2000})
        assert late.status_code == 504, late.text
        assert "--timeout-ms" in late.json()["error"]["message"]
        metrics = client.get("/metrics").text
        assert f'edge_timed_out_rows_total{{model="{name}"}} 1.0' in metrics
        streamed = client.post(
            "/v1/completions", json={"model": name, "prompt": "hi", "max_tokens": 64, "stream": True}
        )
        assert streamed.status_code == 200
        assert streamed.text.rstrip().endswith("data: [DONE]")


# -- rows 2 and 15: types, ranges, encodings -------------------------------------------------------------------

_BAD_FIELDS = [
    ({"model": []}, "'model'"),
    ({"seed": -1}, "seed"),
    ({"stream_options": "yes"}, "'stream_options'"),
    ({"prompt": "hi \ud800 there"}, "'prompt'"),
    ({"temperature": "hot"}, "'temperature'"),
    ({"stream": "false"}, "'stream'"),
    ({"max_tokens": 2.5}, "'max_tokens'"),
    ({"top_p": 0}, "top_p"),
    ({"stop": [1, 2]}, "stop"),
    ({"n": 99}, "'n'"),
    ({"stream": True, "stream_options": {"include_usage": "yes"}}, "'stream_options.include_usage'"),
    ({"stop": ["y" * 300]}, "at most 256 characters"),
]


@pytest.mark.parametrize(("change", "field"), _BAD_FIELDS)
def test_wrong_types_and_ranges_are_400_naming_the_field(
    served: ServeProcess, long_llama: Path, change: dict[str, Any], field: str
) -> None:
    rss = _rss_mb(served)
    body = {"model": _name(long_llama), "prompt": "hi", "max_tokens": 4, **change}
    status, answer = _call(served, "/v1/completions", raw=json.dumps(body).encode())
    assert status == 400, answer
    assert field in answer["error"]["message"]
    assert answer["error"]["type"] == "invalid_request_error"
    triton = {"text_input": body["prompt"], "parameters": {k: v for k, v in body.items() if k != "prompt"}}
    if field not in (  # not Triton parameters
        "'model'",
        "'prompt'",
        "'stream'",
        "'stream_options'",
        "'stream_options.include_usage'",
    ):
        field = field.strip("'")
        status, answer = _call(
            served, f"/v2/models/{_name(long_llama)}/generate", raw=json.dumps(triton).encode()
        )
        assert status == 400, answer
        assert field in answer["error"]
    assert _rss_mb(served) - rss < RSS_GROWTH_MB


@pytest.mark.parametrize(
    ("message", "field"),
    [
        ({"role": 5, "content": "hi"}, "'role' must be a string"),
        ({"role": "user", "content": "a\udfffb"}, "content"),
        ({"role": "user", "content": ["part"]}, "'content' must be a string"),
    ],
)
def test_bad_chat_messages_are_400_naming_the_field(
    served: ServeProcess, long_llama: Path, message: dict[str, Any], field: str
) -> None:
    body = {"model": _name(long_llama), "messages": [message], "max_tokens": 4}
    status, answer = _call(served, "/v1/chat/completions", raw=json.dumps(body).encode())
    assert status == 400, answer
    assert field in answer["error"]["message"]


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_numbers_are_400(served: ServeProcess, long_llama: Path, constant: str) -> None:
    rss = _rss_mb(served)
    raw = f'{{"model": "{_name(long_llama)}", "prompt": "hi", "temperature": {constant}}}'.encode()
    status, answer = _call(served, "/v1/completions", raw=raw)
    assert status == 400, answer
    assert constant.lstrip("-") in answer["error"]["message"]
    triton = f'{{"text_input": "hi", "parameters": {{"temperature": {constant}}}}}'.encode()
    status, answer = _call(served, f"/v2/models/{_name(long_llama)}/generate", raw=triton)
    assert status == 400, answer
    assert _rss_mb(served) - rss < RSS_GROWTH_MB


def test_error_messages_carry_no_object_addresses() -> None:
    import io

    message = public_message(BadInputError(f"cannot identify image file {io.BytesIO(b'x')!r}"))
    assert "0x" not in message
    assert "<_io.BytesIO>" in message


# -- row 3: a generate-only server is a whole server ----------------------------------------------------------


def test_a_generate_only_server_has_health_metrics_and_json_errors(
    served: ServeProcess, long_llama: Path
) -> None:
    assert _call(served, "/v2/health/live") == (200, {"live": True})
    assert _call(served, "/v2/health/ready") == (200, {"ready": True})
    status, answer = _call(served, "/no/such/route")
    assert status == 404
    assert "no endpoint /no/such/route" in _error_message(answer)
    name = _name(long_llama)
    ok = _metric(served, "edge_requests_total", model=name, code="200")
    assert _call(served, "/v1/completions", {"model": name, "prompt": "hi", "max_tokens": 2})[0] == 200
    assert (
        _call(served, f"/v2/models/{name}/generate", {"text_input": "hi", "parameters": {"max_tokens": 2}})[0]
        == 200
    )
    assert _metric(served, "edge_requests_total", model=name, code="200") == ok + 2
    assert _metric(served, "edge_request_duration_seconds_count", model=name) >= 2


# -- row 4: an 8 MB prompt ---------------------------------------------------------------------------------------


def test_an_8mb_prompt_is_refused_before_tokenizing(served: ServeProcess, long_llama: Path) -> None:
    rss = _rss_mb(served)
    for path, body in (
        ("/v1/completions", {"model": _name(long_llama), "prompt": "the lazy dog " * 640_000}),
        (
            "/v1/chat/completions",
            {"model": _name(long_llama), "messages": [{"role": "user", "content": "x" * 8_000_000}]},
        ),
        (f"/v2/models/{_name(long_llama)}/generate", {"text_input": "y" * 8_000_000}),
    ):
        status, answer = _call(served, path, body)
        assert status == 413, answer
        assert "bytes, over the 262144-byte limit" in _error_message(answer)
    assert _call(served, "/v2/health/ready")[0] == 200
    assert _rss_mb(served) - rss < RSS_GROWTH_MB
    # under the byte limit but over the token limit: tokenized (off the loop), then refused by its tokens
    status, answer = _call(
        served, "/v1/completions", {"model": _name(long_llama), "prompt": "the lazy dog " * 20_000}
    )
    assert status == 400, answer
    assert "does not fit the model's 2048 positions" in answer["error"]["message"]


# -- row 11: a temperature of 1e-300 --------------------------------------------------------------------------


def test_a_vanishing_temperature_is_greedy(served: ServeProcess, long_llama: Path) -> None:
    import numpy as np

    rss = _rss_mb(served)
    body = {"model": _name(long_llama), "prompt": "The quick brown fox", "max_tokens": 16}
    greedy = _call(served, "/v1/completions", {**body, "temperature": 0})[1]["choices"][0]["text"]
    tiny = _call(served, "/v1/completions", {**body, "temperature": 1e-300, "seed": 3})[1]["choices"][0][
        "text"
    ]
    assert tiny == greedy
    assert _rss_mb(served) - rss < RSS_GROWTH_MB
    logits = np.asarray([[0.5, 3.0, -1.0, 2.9]], dtype="float32")
    chooser = LogitsChooser(GenerationOptions(do_sample=True, temperature=1e-300, seed=0))
    assert chooser(logits, logits[:, :0].astype("int64")).tolist() == [1]


# -- row 12: stop strings ---------------------------------------------------------------------------------------


def test_stop_strings_are_bounded_in_count_and_length(served: ServeProcess, long_llama: Path) -> None:
    rss = _rss_mb(served)
    body = {"model": _name(long_llama), "prompt": "hi", "max_tokens": 4}
    status, answer = _call(served, "/v1/completions", {**body, "stop": ["x" * 40] * 10_000})
    assert status == 400
    assert "at most 16 strings of at most 256 characters, got 10000" in answer["error"]["message"]
    status, answer = _call(served, "/v1/completions", {**body, "stop": ["y" * 257]})
    assert status == 400
    assert "(longest 257)" in answer["error"]["message"]
    status, answer = _call(served, "/v1/completions", {**body, "stop": ["z" * 256] * 16})
    assert status == 200, answer
    assert _rss_mb(served) - rss < RSS_GROWTH_MB


# -- row 14: chat templates on a budget --------------------------------------------------------------------------


def test_a_runaway_chat_template_is_one_line_and_bounded(served: ServeProcess) -> None:
    rss = _rss_mb(served)
    body = {"model": "hostile-chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    status, answer = _call(served, "/v1/chat/completions", body)
    assert status == 500, answer
    message = answer["error"]["message"]
    assert "chat template went over its budget" in message
    assert "\n" not in message
    assert _call(served, "/v2/health/ready")[0] == 200
    assert _rss_mb(served) - rss < RSS_GROWTH_MB


_SPECIAL = {"bos_token": "<s>"}


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("{{ messages|tojson(indent=10**9) }}", "over the budget|over the 1024-character budget"),
        ("{{ lipsum(n=200000) }}", "lipsum|budget"),
        ("{% macro f(n) %}{{ f(n) }}{% endmacro %}{{ f(1) }}", "RecursionError"),
        ("{{ 'x' * 10**12 }}", "budget"),
        ("{{ 2 ** 999999999 }}", "budget"),
        ("{% include 'other.jinja' %}", "failed to render"),
        (
            "{% set ns = namespace(s='ab') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}",
            "budget",
        ),
        (
            "{% for i in range(1000) %}{% for j in range(1000) %}{% for k in range(1000) %}"
            "{% endfor %}{% endfor %}{% endfor %}",
            "took over",
        ),
        ("{{ '%0999999999d' % 1 }}", "budget"),
        ("{{ 'x'|center(10**9) }}", "budget"),
        ("{{ '{:>999999999}'.format(1) }}", "budget"),
        ("{% for i in range(1000) %}{{ messages }}{% endfor %}", "rendered over"),
    ],
)
def test_hostile_templates_fail_fast_with_one_line(template: str, expected: str) -> None:
    started = time.perf_counter()
    with pytest.raises(BadModelError, match=expected) as caught:
        render_chat(template, [{"role": "user", "content": "hi"}], _SPECIAL, budget=TemplateBudget(1024, 0.5))
    assert "\n" not in str(caught.value)
    assert "chat template" in str(caught.value)
    assert time.perf_counter() - started < 30  # bounded (the budget is 0.5 s; a loaded machine is slower)


def test_a_sane_template_renders_as_before() -> None:
    text = render_chat(CHAT_TEMPLATE, [{"role": "user", "content": "hi"}], _SPECIAL)
    assert text == "<s>user: hi\nassistant:"
    with pytest.raises(BadInputError, match="chat template: no"):
        render_chat("{{ raise_exception('no') }}", [{"role": "user", "content": "hi"}], _SPECIAL)


# -- row 10: SIGTERM with streams and requests running past the grace period ------------------------------------


def test_sigterm_past_the_grace_period_ends_streams_properly_and_answers_503(
    long_llama: Path, tmp_path: Path
) -> None:
    process = start_serve(
        [long_llama], ["--threads", "1", "--timeout-ms", "0", "--shutdown-timeout-s", "1"], tmp_path / "serve"
    )
    body = {"model": _name(long_llama), "prompt": "hello there", "max_tokens": 2000, "temperature": 0}
    streams = [_open_stream(process, {**body, "stream": True}) for _ in range(8)]
    requests = [_open_stream(process, body) for _ in range(24)]
    for sock in streams:
        seen = b""
        while b"data: " not in seen:
            seen += sock.recv(65536)
    process.process.send_signal(signal.SIGTERM)
    answers = [_read_all(sock) for sock in streams + requests]
    code = process.process.wait(timeout=60)
    for answer in answers[:8]:
        assert b'"finish_reason": "abort"' in answer, answer[-400:]
        assert b"data: [DONE]" in answer
    for answer in answers[8:]:
        assert answer.startswith(b"HTTP/1.1 503"), answer[:300]
        assert b"application/json" in answer
        assert b"the server stopped before this request finished" in answer
    assert code == 128 + signal.SIGTERM
    log = process.log.read_text(encoding="utf-8")
    assert "32 request(s) still running after the 1 s grace period were cut" in log
    assert "Traceback" not in log, log[-3000:]
    assert "CancelledError" not in log


def test_sigterm_with_nothing_running_exits_0(long_llama: Path, tmp_path: Path) -> None:
    process = start_serve([long_llama], ["--threads", "1", "--shutdown-timeout-s", "1"], tmp_path / "serve")
    assert (
        _call(process, "/v1/completions", {"model": _name(long_llama), "prompt": "hi", "max_tokens": 2})[0]
        == 200
    )
    assert process.stop() == 0
    assert "every in-flight request was answered" in process.log.read_text(encoding="utf-8")


# -- fuzzing: the OpenAI and Triton bodies, against the app in-process ------------------------------------------

_JSON_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12)
    | st.sampled_from(["\ud800", "a\udfffb", "", "false", "yes"])
)
_JSON = st.recursive(
    _JSON_SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
_KEYS = [
    "model", "prompt", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "top_k",
    "repetition_penalty", "seed", "stop", "stream", "stream_options", "n", "presence_penalty", "logprobs",
    "top_logprobs", "frequency_penalty", "response_format", "tools", "tool_choice", "parallel_tool_calls",
]  # fmt: skip
_MESSAGE = st.fixed_dictionaries(
    {"role": st.sampled_from(["user", "assistant"]) | _JSON_SCALARS, "content": _JSON_SCALARS | _JSON}
)
_SMALL = st.integers(min_value=-2, max_value=6)  # a few tokens: valid requests decode quickly
_BODIES = st.dictionaries(st.sampled_from(_KEYS), _JSON, max_size=8) | st.fixed_dictionaries(
    {"model": st.just("long-llama"), "prompt": st.text(max_size=30), "max_tokens": _SMALL | _JSON_SCALARS},
    optional={
        "messages": st.lists(_MESSAGE, max_size=3),
        "temperature": _JSON_SCALARS | st.floats(0, 2),
        "top_p": _JSON_SCALARS,
        "top_k": _JSON_SCALARS,
        "seed": _JSON_SCALARS,
        "stop": _JSON,
        "stream": _JSON_SCALARS,
        "stream_options": _JSON,
        "repetition_penalty": _JSON_SCALARS,
    },
)


@pytest.fixture(scope="module")
def in_process(long_llama: Path) -> Iterator[Any]:
    """The generate-only app over the long Llama in this process (no HTTP server), with a 24-token limit so
    that only requests for a few tokens decode."""
    from fastapi.testclient import TestClient

    from toolkit.serve.app import build_serving_app
    from toolkit.serve.registry import LoadOptions

    serving = build_serving_app([long_llama], LoadOptions(threads=1), ServeOptions(max_request_tokens=24))
    with TestClient(serving.app, raise_server_exceptions=False) as client:
        yield client


def test_fuzzed_generate_bodies_are_answered_never_500(
    in_process: Any, long_llama: Path, caplog: pytest.LogCaptureFixture
) -> None:
    name = _name(long_llama)
    paths = {"completions": "/v1/completions", "chat": "/v1/chat/completions"}

    @settings(suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large], deadline=None)
    @given(_BODIES, st.sampled_from(["completions", "chat", "triton", "triton_stream"]))
    def post(body: dict[str, Any], route: str) -> None:
        if route.startswith("triton"):
            parameters = {k: v for k, v in body.items() if k not in ("prompt", "model")}
            path = f"/v2/models/{name}/{'generate_stream' if route == 'triton_stream' else 'generate'}"
            body = {"text_input": body.get("prompt"), "parameters": parameters}
        else:
            path = paths[route]
        raw = json.dumps(body).replace('"long-llama"', json.dumps(name)).encode()
        response = in_process.post(path, content=raw, headers={"Content-Type": "application/json"})
        assert response.status_code in (200, 400, 404, 413), response.text
        if response.headers["content-type"].startswith("text/event-stream"):
            assert '"error"' not in response.text
        elif response.status_code != 200:
            message = _error_message(response.json())
            assert "\n" not in message
            assert "Traceback" not in message

    post()
    assert not [r for r in caplog.records if r.levelname in ("ERROR", "CRITICAL")]


# -- sampling settings at float32's edges: refused in one line, or every score stays finite ---------------------

_ANY_NUMBER = (
    st.floats(allow_nan=True, allow_infinity=True, allow_subnormal=True)
    | st.integers(min_value=-(10**400), max_value=10**400)
    | st.sampled_from([5e-324, 1e-320, 1e-2, 1e2, 1e300, 10**400, -0.0])
)

# what each accepts, the documented ranges: (low, high, low included)
_ACCEPTED = {
    "temperature": (0.0, 100.0, False),
    "top_p": (0.0, 1.0, False),
    "repetition_penalty": (0.01, 100.0, True),
    "presence_penalty": (-2.0, 2.0, True),
    "frequency_penalty": (-2.0, 2.0, True),
}


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(sorted(_ACCEPTED)), _ANY_NUMBER)
def test_sampling_settings_are_refused_or_keep_every_score_finite(name: str, value: float) -> None:
    import numpy as np

    low, high, low_included = _ACCEPTED[name]
    if not (low <= value if low_included else low < value) or not value <= high:  # NaN fails both
        with pytest.raises(BadInputError, match=f"^{name} must be [^\n]*$"):
            GenerationOptions(do_sample=True, seed=0, **{name: value})
        return
    options = GenerationOptions(do_sample=True, seed=0, **{name: value})
    logits = np.linspace(-1e3, 1e3, 64, dtype=np.float32).reshape(2, 32)
    history = np.asarray([[31, 0, 5], [30, 1, 31]], dtype=np.int64)  # the largest and smallest logits seen
    with np.errstate(over="raise", divide="raise", invalid="raise"):  # an inf or NaN score raises here
        chooser = LogitsChooser(options)
        for _ in range(2):  # the second step also penalises the first's picks (presence, frequency)
            chosen = chooser(logits, history)
            assert ((chosen >= 0) & (chosen < 32)).all()


def test_sampling_settings_past_float32_are_400s_on_every_route(in_process: Any, long_llama: Path) -> None:
    import warnings

    name = _name(long_llama)
    cases = [
        ('"repetition_penalty": 5e-324', "repetition_penalty must be in [0.01, 100]"),
        ('"repetition_penalty": 1e300', "repetition_penalty must be in [0.01, 100]"),
        ('"temperature": 1e400', "'temperature' must be a finite number, got inf"),
        ('"temperature": 101', "'temperature' must be in [0, 100] (0: greedy)"),
        (f'"top_p": {10**400}', "'top_p' must be a finite number, got an integer past float range"),
        ('"presence_penalty": -1e999', "'presence_penalty' must be a finite number, got -inf"),
        (f'"frequency_penalty": {"9" * 5000}', "an integer of more than 4300 digits"),
    ]
    for setting, message in cases:
        bodies = {
            "/v1/completions": f'{{"model": "{name}", "prompt": "hi", "max_tokens": 2, {setting}}}',
            "/v1/chat/completions": (
                f'{{"model": "{name}", "messages": [{{"role": "user", "content": "hi"}}], {setting}}}'
            ),
            f"/v2/models/{name}/generate": f'{{"text_input": "hi", "parameters": {{"max_tokens": 2, {setting}}}}}',
        }
        for path, raw in bodies.items():
            response = in_process.post(
                path, content=raw.encode(), headers={"Content-Type": "application/json"}
            )
            assert response.status_code == 400, (path, setting, response.text)
            assert message in _error_message(response.json()), (path, setting)
            assert "\n" not in _error_message(response.json())
    # the bounds themselves sample with finite scores: no numpy warning from the decode loop
    body = {"model": name, "prompt": "the lazy dog the lazy dog", "max_tokens": 4, "seed": 1}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for extreme in ({"repetition_penalty": 0.01, "temperature": 100}, {"repetition_penalty": 100}):
            response = in_process.post("/v1/completions", json={**body, **extreme})
            assert response.status_code == 200, response.text
    assert not [w for w in caught if issubclass(w.category, RuntimeWarning)]


@pytest.fixture(scope="module")
def generator(long_llama: Path) -> TextGenerator:
    return TextGenerator.load(long_llama, "cpu", threads=1)


def test_rows_removed_mid_decode_leave_the_others_as_if_alone(generator: TextGenerator) -> None:
    from toolkit.decoding.continuous import ContinuousBatch

    prompts = [f"prompt {i}: " + "the lazy dog " * i for i in range(4)]
    options = generator.options(max_new_tokens=12)
    alone = [generator.generate(p, max_new_tokens=12) for p in prompts]
    batch = ContinuousBatch(generator)
    for key, prompt in enumerate(prompts):
        batch.add(key, prompt, options)
    results = {}
    steps = 0
    while batch.size:
        if steps == 3:
            batch.drop({1, 2})  # two clients leave mid-decode
            assert batch.size == 2
        for event in batch.step():
            assert event.row not in (1, 2) or steps < 3
            if event.generation is not None:
                results[event.row] = event.generation
        steps += 1
    assert sorted(results) == [0, 3]
    assert [results[k].token_ids for k in (0, 3)] == [alone[k].token_ids for k in (0, 3)]
