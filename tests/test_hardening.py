"""Issue 14's cases, each as a request or a command with its expected answer.

Packages that cannot escape themselves, total manifest parsing, up-front argument checks, a server that
hostile or careless clients cannot stall, bloat or crash (real `edge serve` subprocesses on 127.0.0.1,
bounded loops), access control (API key, TLS with a certificate made here), and clean interrupts.
Hypothesis fuzzes manifest parsing and request decoding (2,000 examples each under CI=true, see conftest).
"""

from __future__ import annotations

import contextlib
import datetime
import http.client
import ipaddress
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.serve_process import ServeProcess, start_serve
from toolkit import Runner, TextEmbedding, load
from toolkit.atomic import owner_prefix, remove_stale, staging_directory
from toolkit.cli import edge
from toolkit.errors import BadInputError, BadModelError
from toolkit.manifest import MANIFEST_NAME, Manifest, ModelPackage, resolve_inside
from toolkit.serve.engine import Engine
from toolkit.serve.errors import error_response, public_message
from toolkit.serve.kserve.protocol import decode_request
from toolkit.serve.models import PipelineModel, RawModel
from toolkit.tasks import task_for

STARTUP_S = 120.0
API_KEY = "test-key-0123456789abcdef"


# -- packages made for the cases -----------------------------------------------------------------------


def _manifest_dict(package: Path) -> dict[str, Any]:
    return json.loads((package / MANIFEST_NAME).read_text(encoding="utf-8"))


def _copy(package: Path, folder: Path, edit: Any = None) -> Path:
    """A copy of `package` in `folder`, its manifest dict passed through `edit` (which changes it in place)."""
    copy = Path(shutil.copytree(package, folder))
    if edit is not None:
        data = _manifest_dict(copy)
        edit(data)
        (copy / MANIFEST_NAME).write_text(json.dumps(data), encoding="utf-8")
    return copy


def _as_embedding(data: dict[str, Any], pooling: str = "mean") -> None:
    data["task"] = "embed"
    data["preprocessing"]["pooling"] = pooling
    data["preprocessing"]["normalize"] = True


@pytest.fixture(scope="module")
def embed_package(tiny_bert_package: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny BERT as a sentence-embedding package (mean pooling, normalised)."""
    return _copy(tiny_bert_package, tmp_path_factory.mktemp("embed") / "tiny-embed", _as_embedding)


def _cli(*args: str) -> Any:
    return CliRunner().invoke(edge, list(args))


def _assert_one_line_error(result: Any, *fragments: str) -> None:
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


# -- 1. containment --------------------------------------------------------------------------------------


def test_a_symlinked_model_leaving_the_package_is_refused(tiny_bert_package: Path, tmp_path: Path) -> None:
    outside = tmp_path / "secret.txt"
    outside.write_text("root:x:0:0:root:/root:/bin/bash\n", encoding="utf-8")
    package = _copy(tiny_bert_package, tmp_path / "pkg")
    (package / "model.onnx").unlink()
    (package / "model.onnx").symlink_to(outside)
    _assert_one_line_error(_cli("info", str(package)), "outside the package")
    with pytest.raises(BadModelError, match="outside the package"):
        load(package)
    # a link that stays inside the package is fine
    (package / "model.onnx").unlink()
    shutil.copy(tiny_bert_package / "model.onnx", package / "real.onnx")
    (package / "model.onnx").symlink_to("real.onnx")
    assert _cli("info", str(package)).exit_code == 0


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("variant", "../other/model.onnx"),
        ("variant", "/etc/passwd"),
        ("variant", "sub/../../model.onnx"),
        ("variant", "C:\\models\\model.onnx"),
        ("tokenizer", "/etc/passwd"),
        ("tokenizer", "../tokenizer.json"),
    ],
)
def test_a_path_leaving_the_package_fails_to_load_with_one_line(
    tiny_bert_package: Path, tmp_path: Path, field: str, value: str
) -> None:
    def edit(data: dict[str, Any]) -> None:
        if field == "variant":
            data["variants"]["other"] = {**data["variants"]["fp32"], "name": "other", "file": value}
        else:
            data["preprocessing"]["tokenizer"] = value

    other = tmp_path / "other"
    shutil.copytree(tiny_bert_package, other)  # a real model where ../other/model.onnx points
    package = _copy(tiny_bert_package, tmp_path / "pkg", edit)
    _assert_one_line_error(_cli("info", str(package)), "relative path inside the package")
    with pytest.raises(BadModelError, match="inside the package"):
        ModelPackage.open(package)
    served = _cli("serve", str(package), "--port", "0")
    _assert_one_line_error(served, "inside the package")


def test_a_symlinked_tokenizer_leaving_the_package_is_refused(embed_package: Path, tmp_path: Path) -> None:
    package = _copy(embed_package, tmp_path / "pkg")
    outside = tmp_path / "tokenizer.json"
    shutil.move(package / "tokenizer.json", outside)
    (package / "tokenizer.json").symlink_to(outside)
    with pytest.raises(BadModelError, match=r"tokenizer 'tokenizer\.json' is a link to a path outside"):
        load(package)


def test_resolve_inside_is_the_one_join() -> None:
    root = Path("/tmp/does-not-matter")
    assert resolve_inside(root, "model.int8.onnx") == root / "model.int8.onnx"
    assert resolve_inside(root, "sub/tokenizer.json") == root / "sub" / "tokenizer.json"
    for bad in ("", "..", "../x", "/abs", "a/../../b", "a\\b", "x\x00y"):
        with pytest.raises(BadModelError):
            resolve_inside(root, bad)


# -- 6. bad manifests --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("what", "edit", "message"),
    [
        ("empty variants list", lambda d: d.__setitem__("variants", []), "variants"),
        ("no variants", lambda d: d.__setitem__("variants", {}), "variants must name at least one"),
        ("negative max_length", lambda d: d["preprocessing"].__setitem__("max_length", -1), "max_length"),
        ("max_length true", lambda d: d["preprocessing"].__setitem__("max_length", True), "max_length"),
        ("shape a string", lambda d: d["inputs"][0].__setitem__("shape", "batch"), "shape"),
        ("name a number", lambda d: d.__setitem__("name", 3), "name"),
        ("variant key mismatch", lambda d: d["variants"]["fp32"].__setitem__("name", "x"), "the key"),
        ("labels numbers", lambda d: d.__setitem__("labels", [1, 2]), "labels"),
        ("inputs null", lambda d: d.__setitem__("inputs", None), "inputs"),
        ("preprocessing kind", lambda d: d["preprocessing"].__setitem__("kind", "smell"), "preprocessing"),
    ],
)
def test_a_malformed_manifest_is_one_line_exit_2(
    tiny_bert_package: Path, tmp_path: Path, what: str, edit: Any, message: str
) -> None:
    package = _copy(tiny_bert_package, tmp_path / "pkg", edit)
    _assert_one_line_error(_cli("info", str(package)), "edge.json", message)


def test_non_utf8_and_deeply_nested_manifests_are_bad_models(tiny_bert_package: Path, tmp_path: Path) -> None:
    package = _copy(tiny_bert_package, tmp_path / "pkg")
    (package / MANIFEST_NAME).write_bytes(b'{"format": 1, "name": "\xff\xfe"}')
    _assert_one_line_error(_cli("info", str(package)), "not UTF-8")
    (package / MANIFEST_NAME).write_text("[" * 100_000, encoding="utf-8")
    _assert_one_line_error(_cli("info", str(package)), "not valid JSON")


def test_a_tokenizer_that_is_not_a_tokenizer_is_a_bad_model(embed_package: Path, tmp_path: Path) -> None:
    package = _copy(embed_package, tmp_path / "pkg")
    (package / "tokenizer.json").write_text('{"not": "a tokenizer"}', encoding="utf-8")
    with pytest.raises(BadModelError, match="not a tokenizers JSON file"):
        load(package)
    _assert_one_line_error(_cli("run", str(package), "--text", "hello"), "tokenizer")


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield prefix
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _paths(item, (*prefix, index))


@st.composite
def _mutated_manifests(draw: st.DrawFn, base: dict[str, Any]) -> dict[str, Any]:
    data = json.loads(json.dumps(base))
    for _ in range(draw(st.integers(1, 3))):
        paths = [p for p in _paths(data) if p]
        path = draw(st.sampled_from(paths))
        parent = data
        for key in path[:-1]:
            parent = parent[key]
        action = draw(st.sampled_from(["replace", "delete", "dotdot"]))
        if action == "delete" and isinstance(parent, dict):
            del parent[path[-1]]
        elif action == "dotdot":
            parent[path[-1]] = draw(
                st.sampled_from(["../x.onnx", "/etc/passwd", "a/../../b", "", "..", "C:x"])
            )
        else:
            parent[path[-1]] = draw(_json_values)
    return data


def test_fuzzed_manifests_parse_or_are_bad_models(tiny_bert_package: Path, embed_package: Path) -> None:
    bases = [_manifest_dict(tiny_bert_package), _manifest_dict(embed_package)]

    @settings(suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large], deadline=None)
    @given(st.sampled_from(bases).flatmap(_mutated_manifests))
    def parse(data: dict[str, Any]) -> None:
        try:
            text = json.dumps(data)
        except ValueError:  # nan/inf are fine for json.dumps; anything else is not a manifest to test
            return
        try:
            manifest = Manifest.from_json(text, "edge.json")
        except BadModelError as exc:
            message = str(exc)
        else:
            message = ""
            for variant in manifest.variants.values():  # whatever parsed stays inside the package
                resolve_inside(tiny_bert_package, variant.file)
        assert "\n" not in message

    parse()


@settings(suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.binary(max_size=300) | st.text(max_size=300).map(lambda t: t.encode("utf-8", "surrogatepass")))
def test_fuzzed_manifest_bytes_are_bad_models(tmp_path_factory: pytest.TempPathFactory, raw: bytes) -> None:
    folder = tmp_path_factory.mktemp("raw", numbered=True)
    (folder / MANIFEST_NAME).write_bytes(raw)
    with contextlib.suppress(BadModelError):
        ModelPackage.open(folder)


# -- 7. API checks ------------------------------------------------------------------------------------


def test_embed_takes_any_iterable_and_checks_types_up_front(embed_package: Path) -> None:
    model = load(embed_package)
    assert isinstance(model, TextEmbedding)
    texts = ["hello world", "a cat sat on the mat", "edge"]
    expected = model.embed(texts)
    assert expected.shape[0] == 3
    np.testing.assert_allclose(model.embed(t for t in texts), expected, atol=1e-6)
    np.testing.assert_allclose(model.embed(tuple(texts)), expected, atol=1e-6)
    for bad, message in [
        (None, "got None"),
        (123, "got int"),
        ("one text", "single str"),
        (["ok", 5], r"texts\[1\] is int"),
        ((t for t in ["ok", None]), r"texts\[1\] is None"),
    ]:
        with pytest.raises(BadInputError, match=message):
            model.embed(bad)


def test_runner_run_checks_feeds_and_outputs_up_front(bert_runner: Runner) -> None:
    ids = np.array([[2, 10, 3]], dtype=np.int64)
    feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
    whole = bert_runner.run(feeds)
    one = bert_runner.run(feeds, outputs="last_hidden_state")
    assert list(one) == ["last_hidden_state"]
    np.testing.assert_array_equal(one["last_hidden_state"], whole["last_hidden_state"])
    with pytest.raises(BadInputError, match="unknown output 'hidden'"):
        bert_runner.run(feeds, outputs="hidden")
    with pytest.raises(BadInputError, match="feeds must be a mapping"):
        bert_runner.run([ids])  # type: ignore[arg-type]
    with pytest.raises(BadInputError, match="feeds must be a mapping"):
        bert_runner.run(None)  # type: ignore[arg-type]
    ragged = {**feeds, "input_ids": [[2, 10, 3], [2, 3]]}
    with pytest.raises(BadInputError, match=r"input 'input_ids'.*rectangular"):
        bert_runner.run(ragged)
    with pytest.raises(BadInputError, match="output names must be strings"):
        bert_runner.run(feeds, outputs=[1])  # type: ignore[list-item]


# -- interrupts and staging -----------------------------------------------------------------------------


def _dead_pid() -> int:
    done = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    return int(done.stdout)


def test_stale_staging_of_a_dead_process_is_removed_by_the_next_run(tmp_path: Path) -> None:
    target = tmp_path / "model.int8.onnx"
    dead, alive = _dead_pid(), os.getppid()
    stale = tmp_path / f"{owner_prefix(target, dead)}abc.staging"
    (stale / "inner").mkdir(parents=True)
    (stale / "inner" / "big.bin").write_bytes(b"x" * 1000)
    stale_file = tmp_path / f"{owner_prefix(target, dead)}xyz.tmp"
    stale_file.write_bytes(b"partial")
    live = tmp_path / f"{owner_prefix(target, alive)}def.staging"
    live.mkdir()
    other = tmp_path / f"{owner_prefix(tmp_path / 'other.onnx', dead)}ghi.staging"
    other.mkdir()
    # another host's (container's) folder: its pids mean nothing here
    elsewhere = tmp_path / f".{target.name}.{dead}-0000beef.jkl.staging"
    elsewhere.mkdir()
    with staging_directory(target) as staging:
        assert staging.name.startswith(owner_prefix(target))
        assert staging.name.startswith(f".{target.name}.{os.getpid()}-")
        assert not stale.exists()
        assert not stale_file.exists()
        assert live.exists(), "a live process's staging folder is left alone"
        assert other.exists(), "another target's staging folder is left alone"
        assert elsewhere.exists(), "another host's staging folder is left alone"
    assert not staging.exists()
    # a retired previous target whose replacement never arrived is put back, not deleted
    package = tmp_path / "pkg"
    retired = tmp_path / f"{owner_prefix(package, dead)}old1.old"
    (retired / "pkg").mkdir(parents=True)
    (retired / "pkg" / "edge.json").write_text("{}", encoding="utf-8")
    remove_stale(package)
    assert (package / "edge.json").is_file()
    assert not retired.exists()


def _quantize_process(package: Path, folder: Path) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-c", "from toolkit.cli import main; main()", "quantize", str(package)]
    command += ["--method", "dynamic-int8"]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=(folder / "stderr.txt").open("wb"))


def _staging(package: Path) -> list[Path]:
    return [p for p in package.iterdir() if p.name.endswith((".staging", ".tmp"))]


def _wait_for_staging(process: subprocess.Popen[bytes], package: Path) -> bool:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if _staging(package):
            return True
        time.sleep(0.005)
    return False


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_a_killed_quantize_leaves_no_staging_behind(
    minilm_package: Path, tmp_path: Path, sig: signal.Signals
) -> None:
    package = _copy(minilm_package, tmp_path / "pkg")
    for attempt in range(3):  # the staging folder must exist when the signal lands; retry if it was too quick
        process = _quantize_process(package, tmp_path)
        if _wait_for_staging(process, package):
            break
        process.wait(timeout=120)
        (package / "model.int8.onnx").unlink(missing_ok=True)
        assert attempt < 2, "quantize never showed a staging folder"
    process.send_signal(sig)
    code = process.wait(timeout=120)
    if sig == signal.SIGTERM:
        assert code == 143, (tmp_path / "stderr.txt").read_text(encoding="utf-8")
        assert "error: terminated" in (tmp_path / "stderr.txt").read_text(encoding="utf-8")
        assert _staging(package) == []
    else:
        assert code == -signal.SIGKILL
        left = _staging(package)
        assert left, "SIGKILL leaves its staging folder (nothing can run)"
        rerun = _cli("quantize", str(package), "--method", "dynamic-int8")
        assert rerun.exit_code in (0, 1), rerun.output  # 1: the variant missed its accuracy budget (kept)
        assert not any(p.exists() for p in left), "the next run on the same target removed them"
        assert _staging(package) == []
        assert (package / "model.int8.onnx").is_file()


def test_sigterm_during_convert_force_leaves_no_staging(
    tiny_bert_dir: Path, tiny_bert_package: Path, tmp_path: Path
) -> None:
    out = _copy(tiny_bert_package, tmp_path / "out")
    command = [sys.executable, "-c", "from toolkit.cli import main; main()", "convert", str(tiny_bert_dir)]
    command += ["-o", str(out), "--force"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def staged() -> list[Path]:
        return [p for p in tmp_path.iterdir() if p.name.startswith(".out.") and p.name.endswith(".staging")]

    deadline = time.monotonic() + 120
    while not staged() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    assert staged(), "convert finished before its staging folder was seen"
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 143, stderr.decode()
    assert "error: terminated" in stderr.decode()
    assert staged() == []
    assert ModelPackage.open(out).manifest.name == _name(tiny_bert_package), "the previous package is intact"


# -- the server ------------------------------------------------------------------------------------------


Served = ServeProcess


def _start(
    packages: Sequence[Path],
    args: Sequence[str],
    folder: Path,
    env: dict[str, str] | None = None,
    context: ssl.SSLContext | None = None,
) -> Served:
    return start_serve(packages, ["--threads", "1", *args], folder, env, context)


@contextlib.contextmanager
def _running(packages: Sequence[Path], args: Sequence[str], folder: Path, **kwargs: Any) -> Iterator[Served]:
    served = _start(packages, args, folder, **kwargs)
    try:
        yield served
    finally:
        served.stop()


def _call(
    served: Served,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(served.url + path, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=120, context=served.context) as response:
            return response.status, {k.lower(): v for k, v in response.headers.items()}, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, {k.lower(): v for k, v in exc.headers.items()}, exc.read()


def _post(served: Served, path: str, payload: Any, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    status, response_headers, data = _call(served, "POST", path, body, {"Content-Type": "application/json", **(headers or {})})  # fmt: skip
    assert response_headers.get("content-type") == "application/json", (status, data[:200])
    return status, json.loads(data)


def _metric(served: Served, name: str, **labels: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    _, _, body = _call(served, "GET", "/metrics")
    return sum(
        sample.value
        for family in text_string_to_metric_families(body.decode())
        for sample in family.samples
        if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
    )


def _wait_for(condition: Any, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.02)


def _texts_request(texts: Sequence[str]) -> dict[str, Any]:
    return {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [len(texts)], "data": list(texts)}]}


def _ids_request(ids: np.ndarray) -> dict[str, Any]:
    feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
    return {
        "inputs": [
            {"name": n, "datatype": "INT64", "shape": list(a.shape), "data": a.reshape(-1).tolist()}
            for n, a in feeds.items()
        ]
    }


def _rss_mb(pid: int) -> float:
    import psutil

    return psutil.Process(pid).memory_info().rss / 2**20


@pytest.fixture(scope="module")
def hardened(
    tiny_bert_package: Path, minilm_package: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    """MiniLM (and its -text model) and the tiny BERT, default limits, batches of 8, a 3 s body deadline."""
    args = ["--max-batch", "8", "--body-timeout-s", "3", "--max-body-mb", "80"]
    with _running([tiny_bert_package, minilm_package], args, tmp_path_factory.mktemp("hardened")) as served:
        yield served


def _name(package: Path) -> str:
    return ModelPackage.open(package).manifest.name


# -- 2. limits and deadlines -------------------------------------------------------------------------------


def test_256_texts_of_256_tokens_are_refused_without_growing_the_server(
    hardened: Served, minilm_package: Path
) -> None:
    text_model = f"{_name(minilm_package)}-text"
    long_text = " ".join(["word"] * 300)  # well past MiniLM's 256-token cut
    before = _rss_mb(hardened.process.pid)
    status, body = _post(hardened, f"/v2/models/{text_model}/infer", _texts_request([long_text] * 256))
    assert status == 413
    assert "256 rows, over the 64-row limit" in body["error"]
    # under the row limit, the token limit holds: 40 x 256 tokens = 10,240 > 8,192
    status, body = _post(hardened, f"/v2/models/{text_model}/infer", _texts_request([long_text] * 40))
    assert status == 413
    assert "tokens (rows x sequence), over the 8192-token limit" in body["error"]
    status, body = _post(hardened, f"/v2/models/{text_model}/infer", _texts_request([""] * 20_000))
    assert status == 413
    assert f"model '{text_model}'" in body["error"]
    assert _rss_mb(hardened.process.pid) - before < 300
    # what fits is answered
    status, body = _post(hardened, f"/v2/models/{text_model}/infer", _texts_request([long_text] * 16))
    assert status == 200
    assert body["outputs"][0]["shape"] == [16, 384]


def test_a_request_over_max_batch_is_split_and_equals_one_run(
    hardened: Served, tiny_bert_package: Path, bert_runner: Runner
) -> None:
    rng = np.random.default_rng(5)
    ids = rng.integers(5, 40, size=(20, 6)).astype(np.int64)
    status, body = _post(hardened, f"/v2/models/{_name(tiny_bert_package)}/infer", _ids_request(ids))
    assert status == 200
    expected = bert_runner.run(
        {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
    )["last_hidden_state"]
    (output,) = body["outputs"]
    assert output["shape"] == [20, 6, 32]
    np.testing.assert_allclose(np.array(output["data"], dtype=np.float32).reshape(expected.shape), expected, atol=1e-5)  # fmt: skip


def test_a_timed_out_request_drops_its_unrun_rows_and_shutdown_does_not_wait(
    minilm_package: Path, tmp_path: Path
) -> None:
    """64 rows of 256 tokens in pieces of one row (each tens of ms on one thread) and a 0.5 s deadline: the
    rows not run by then are dropped (the batch count stops growing well short of 64), and SIGTERM exits
    without running them."""
    minilm = _name(minilm_package)
    args = ["--max-batch", "1", "--timeout-ms", "500", "--max-request-tokens", "100000"]
    with _running([minilm_package], args, tmp_path) as served:
        ids = np.full((64, 256), 1000, dtype=np.int64)
        status, body = _post(served, f"/v2/models/{minilm}/infer", _ids_request(ids))
        assert status == 504
        assert f"model '{minilm}' did not answer within 0.5 s" in body["error"]
        # Seen once in ~6 full runs on a loaded machine: the gauge still read 56 when the 504 arrived (cause not
        # found; the unrun pieces are cancelled either way, which the batch count below checks). Allow it 2 s.
        _wait_for(
            lambda: _metric(served, "edge_queue_depth", model=minilm) == 0, "an empty queue", timeout=2.0
        )

        def batches() -> float:
            return _metric(served, "edge_batch_size_count", model=minilm)

        time.sleep(1.0)  # the piece running at the deadline finishes (one row: well under a second)
        ran = batches()
        time.sleep(1.0)
        assert batches() == ran < 64
        served.process.send_signal(signal.SIGTERM)
        assert served.process.wait(timeout=30) == 0


# -- 3 and 8. no 500s for bad input; clean 400s --------------------------------------------------------


def test_lone_surrogates_and_deep_nesting_are_400(hardened: Served, minilm_package: Path) -> None:
    text_model = f"{_name(minilm_package)}-text"
    path = f"/v2/models/{text_model}/infer"
    before = _metric(hardened, "edge_requests_total", model=text_model, code="400")
    status, body = _post(hardened, path, b'{"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["\\ud800"]}]}')  # fmt: skip
    assert status == 400
    assert "lone surrogate" in body["error"]
    status, body = _post(hardened, path, b'{"inputs": [{"name": "\\udfff", "datatype": "BYTES", "shape": [1], "data": ["x"]}]}')  # fmt: skip
    assert status == 400
    assert "\\udfff" in body["error"]
    status, body = _post(hardened, path, b"[" * 100_000)
    assert status == 400
    assert "nested deeper" in body["error"]
    assert _metric(hardened, "edge_requests_total", model=text_model, code="400") - before == 3
    assert _metric(hardened, "edge_requests_total", code="500") == 0


def test_token_ids_outside_the_vocabulary_and_empty_dims_are_400(
    hardened: Served, tiny_bert_package: Path, minilm_package: Path
) -> None:
    for package, vocab in ((tiny_bert_package, None), (minilm_package, 30522)):
        path = f"/v2/models/{_name(package)}/infer"
        status, body = _post(hardened, path, _ids_request(np.array([[2, -1, 3]], dtype=np.int64)))
        assert status == 400
        assert "value -1 is outside the model's range [0, " in body["error"]
        high = vocab if vocab is not None else 10**6
        status, body = _post(hardened, path, _ids_request(np.array([[2, high, 3]], dtype=np.int64)))
        assert status == 400
        assert f"value {high} is outside" in body["error"]
        status, body = _post(hardened, path, _ids_request(np.zeros((1, 0), dtype=np.int64)))
        assert status == 400
        assert "empty dimension" in body["error"]
        status, body = _post(hardened, path, _ids_request(np.zeros((0, 3), dtype=np.int64)))
        assert status == 400
        assert "the batch is empty" in body["error"]


def test_onnxruntime_failures_reach_the_client_without_paths_or_node_names(
    hardened: Served, tiny_bert_package: Path
) -> None:
    ids = np.full((1, 100), 7, dtype=np.int64)  # past the tiny BERT's 64 positions: onnxruntime fails
    status, body = _post(hardened, f"/v2/models/{_name(tiny_bert_package)}/infer", _ids_request(ids))
    assert status == 400
    assert "onnxruntime could not run" in body["error"]
    assert "/onnxruntime" not in body["error"]
    assert ".cc:" not in body["error"]
    assert ".h:" not in body["error"]
    assert "Name:" not in body["error"]
    assert "/embeddings" not in body["error"]


def test_public_message_never_raises_and_strips_internals() -> None:
    class Nasty(BadInputError):
        def __str__(self) -> str:
            raise RuntimeError("boom")

    assert public_message(Nasty()) == "internal error: Nasty"
    assert public_message(RuntimeError("/home/me/secret")) == "internal error: RuntimeError"
    surrogate = public_message(BadInputError("input '\udcff' is bad"))
    surrogate.encode("utf-8")
    response = error_response(BadInputError("x\ud800 at /srv/models/pkg/model.onnx"))
    assert json.loads(response.body) == {"error": "x\\ud800 at <path>"}


# -- 4. stalls ----------------------------------------------------------------------------------------------


def _slow_body(served: Served, path: str, declared: int, sent: bytes) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", served.port), timeout=30)
    head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {declared}\r\n\r\n"
    sock.sendall(head.encode() + sent)
    return sock


def _read_response(sock: socket.socket) -> tuple[int, bytes]:
    response = http.client.HTTPResponse(sock)
    response.begin()
    return response.status, response.read()


def test_short_bodies_get_408_and_do_not_hold_up_other_clients(
    hardened: Served, tiny_bert_package: Path, bert_runner: Runner
) -> None:
    path = f"/v2/models/{_name(tiny_bert_package)}/infer"
    slow = [_slow_body(hardened, path, 1000, b'{"inputs": [') for _ in range(4)]
    ids = np.array([[2, 11, 12, 3]], dtype=np.int64)
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda _: _post(hardened, path, _ids_request(ids)), range(16)))
    assert [status for status, _ in answers] == [200] * 16
    for sock in slow:  # still held open (no answer yet) while the 16 were served
        sock.setblocking(False)
        with pytest.raises(BlockingIOError):
            sock.recv(1)
        sock.setblocking(True)
    for sock in slow:
        status, data = _read_response(sock)
        assert status == 408
        assert "did not arrive within 3 s" in json.loads(data)["error"]
        sock.close()


def test_a_client_gone_mid_upload_is_499_not_500(hardened: Served, tiny_bert_package: Path) -> None:
    bert = _name(tiny_bert_package)
    before = _metric(hardened, "edge_requests_total", model=bert, code="499")
    sock = _slow_body(hardened, f"/v2/models/{bert}/infer", 5000, b'{"inputs": [')
    time.sleep(0.2)
    sock.close()
    _wait_for(lambda: _metric(hardened, "edge_requests_total", model=bert, code="499") == before + 1, "a 499")
    assert _metric(hardened, "edge_requests_total", code="500") == 0
    assert "failed" not in hardened.log.read_text(encoding="utf-8")


def test_a_large_body_is_decoded_off_the_event_loop(hardened: Served, tiny_bert_package: Path) -> None:
    """A ~20 MB JSON body: while it is parsed, a health check is answered (before the big request's answer)."""
    ids = np.full(
        (64, 60_000), 7, dtype=np.int64
    )  # 64 x 60,000 tokens: refused by the token limit after decoding
    body = json.dumps(_ids_request(ids)).encode()
    order: list[str] = []
    with ThreadPoolExecutor(2) as pool:
        big = pool.submit(lambda: (_call(hardened, "POST", f"/v2/models/{_name(tiny_bert_package)}/infer", body), order.append("big")))  # fmt: skip
        time.sleep(0.3)  # the body is on its way (or being parsed)
        live = _call(hardened, "GET", "/v2/health/live")
        order.append("live")
        (status, _, data), _ = big.result(timeout=120)
    assert live[0] == 200
    assert status == 413, data[:200]
    assert order[0] == "live"


# -- 8. the right name in every message; 500s logged with their cause ------------------------------------


def test_503_and_504_name_the_text_model(minilm_package: Path, tmp_path: Path) -> None:
    text_model = f"{_name(minilm_package)}-text"
    args = ["--max-batch", "64", "--max-delay-ms", "60000", "--max-queue", "1", "--timeout-ms", "1500"]
    with _running([minilm_package], args, tmp_path) as held, ThreadPoolExecutor(1) as pool:
        path = f"/v2/models/{text_model}/infer"
        waiting = pool.submit(_post, held, path, _texts_request(["hello"]))
        _wait_for(lambda: _metric(held, "edge_queue_depth") == 1, "one queued request")
        status, body = _post(held, path, _texts_request(["again"]))
        assert status == 503
        assert body["error"].startswith(f"model '{text_model}' has 1 requests waiting")
        status, body = waiting.result(timeout=60)
        assert status == 504
        assert body["error"].startswith(f"model '{text_model}' did not answer within 1.5 s")


def test_a_500_is_logged_with_its_cause_and_the_traceback_with_debug(
    embed_package: Path, tmp_path: Path
) -> None:
    broken = _copy(embed_package, tmp_path / "broken", lambda d: _as_embedding(d, pooling="median"))
    name = f"{_name(broken)}-text"
    for debug in (False, True):
        args = ["--debug"] if debug else []
        with _running([broken], args, tmp_path / f"debug-{debug}") as served:
            status, body = _post(served, f"/v2/models/{name}/infer", _texts_request(["hello"]))
            assert status == 500
            assert "pooling mode 'median' is not supported" in body["error"]
            served.stop()
            log = served.log.read_text(encoding="utf-8")
            assert f"inference on model '{name}' failed: BadModelError: pooling mode 'median'" in log
            assert ("Traceback (most recent call last)" in log) == debug


# -- 9. access -------------------------------------------------------------------------------------------


def _certificate(folder: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key, as PEM files."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = folder / "cert.pem", folder / "key.pem"
    cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_file, key_file


def test_api_key_and_tls(tiny_bert_package: Path, tmp_path: Path) -> None:
    cert, key = _certificate(tmp_path)
    context = ssl.create_default_context(cafile=str(cert))
    args = ["--ssl-certfile", str(cert), "--ssl-keyfile", str(key)]
    bert = _name(tiny_bert_package)
    with _running([tiny_bert_package], args, tmp_path / "serve", env={"EDGE_API_KEY": API_KEY}, context=context) as served:  # fmt: skip
        assert served.url.startswith("https://127.0.0.1:")
        assert _call(served, "GET", "/v2/health/live")[0] == 200
        assert _call(served, "GET", "/v2/health/ready")[0] == 200
        for path in ("/v2", f"/v2/models/{bert}", "/metrics", f"/v2/models/{bert}/ready"):
            status, headers, data = _call(served, "GET", path)
            assert status == 401, path
            assert headers["www-authenticate"].startswith("Bearer")
            assert "has no Authorization: Bearer header" in json.loads(data)["error"]
            wrong = _call(served, "GET", path, headers={"Authorization": "Bearer " + API_KEY[:-1] + "X"})
            assert wrong[0] == 401
            assert "wrong API key" in json.loads(wrong[2])["error"]
            assert _call(served, "GET", path, headers={"Authorization": f"Bearer {API_KEY}"})[0] == 200
        ids = np.array([[2, 11, 3]], dtype=np.int64)
        status, _ = _post(served, f"/v2/models/{bert}/infer", _ids_request(ids))
        assert status == 401
        status, body = _post(served, f"/v2/models/{bert}/infer", _ids_request(ids), {"Authorization": f"Bearer {API_KEY}"})  # fmt: skip
        assert status == 200
        assert body["outputs"][0]["shape"] == [1, 3, 32]
        # plain HTTP on the TLS port gets no HTTP answer
        plain = http.client.HTTPConnection("127.0.0.1", served.port, timeout=10)
        plain.request("GET", "/v2/health/live")
        with pytest.raises((http.client.HTTPException, ConnectionError, OSError)):
            plain.getresponse().read()
        # a client that does not trust the certificate is refused
        with pytest.raises(urllib.error.URLError):
            urllib.request.urlopen(served.url + "/v2/health/live", timeout=10)


def test_access_options_are_checked(tiny_bert_package: Path, tmp_path: Path) -> None:
    short = _cli("serve", str(tiny_bert_package), "--port", "0", "--api-key", "short")
    _assert_one_line_error(short, "at least 16 characters")
    half = _cli("serve", str(tiny_bert_package), "--port", "0", "--ssl-certfile", str(tmp_path / "c.pem"))
    _assert_one_line_error(half, "go together")
    (tmp_path / "c.pem").write_text("not a certificate", encoding="utf-8")
    (tmp_path / "k.pem").write_text("not a key", encoding="utf-8")
    bad = _cli("serve", str(tiny_bert_package), "--port", "0", "--ssl-certfile", str(tmp_path / "c.pem"), "--ssl-keyfile", str(tmp_path / "k.pem"))  # fmt: skip
    _assert_one_line_error(bad, "do not load as a PEM certificate")
    from toolkit.cli.serve import API_KEY_ENV
    from toolkit.serve.access import API_KEY_ENV as SERVER_API_KEY_ENV

    assert API_KEY_ENV == SERVER_API_KEY_ENV


# -- 5. a second signal -------------------------------------------------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_second_signal_answers_waiting_requests_503_and_exits_at_once(
    tiny_bert_package: Path, tmp_path: Path, sig: signal.Signals
) -> None:
    bert = _name(tiny_bert_package)
    args = ["--max-batch", "64", "--max-delay-ms", "60000", "--timeout-ms", "0"]
    served = _start([tiny_bert_package], args, tmp_path)
    try:
        ids = np.array([[2, 11, 3]], dtype=np.int64)
        with ThreadPoolExecutor(2) as pool:
            waiting = [
                pool.submit(_post, served, f"/v2/models/{bert}/infer", _ids_request(ids)) for _ in range(2)
            ]
            _wait_for(lambda: _metric(served, "edge_queue_depth", model=bert) == 2, "two queued requests")
            served.process.send_signal(sig)
            time.sleep(0.5)
            assert served.process.poll() is None, "the first signal waits for in-flight requests"
            served.process.send_signal(sig)
            answers = [future.result(timeout=30) for future in waiting]
        for status, body in answers:
            assert status == 503
            assert "the server was stopped" in body["error"]
        assert served.process.wait(timeout=30) == 128 + sig
        assert "stopped at once" in served.log.read_text(encoding="utf-8")
    finally:
        served.stop()


# -- hypothesis: request decoding never answers 500 ----------------------------------------------------


_datatypes = st.sampled_from(["BOOL", "INT8", "INT32", "INT64", "UINT8", "FP16", "FP32", "FP64", "BYTES", "BF16", "int64", ""])  # fmt: skip
_input = st.fixed_dictionaries(
    {
        "name": st.sampled_from(["input_ids", "attention_mask", "token_type_ids", "text", "x", ""])
        | st.text(max_size=4),
        "datatype": _datatypes,
        "shape": st.lists(st.integers(-2, 5), max_size=4) | _json_values,
    },
    optional={
        "data": st.lists(
            st.integers(-(2**65), 2**65) | st.floats() | st.text(max_size=3) | st.booleans(), max_size=30
        )
        | _json_values,
        "parameters": st.fixed_dictionaries(
            {}, optional={"binary_data_size": st.integers(-2, 40) | _json_values}
        )
        | _json_values,
    },
)
_request = st.fixed_dictionaries(
    {"inputs": st.lists(_input, max_size=4) | _json_values},
    optional={
        "id": st.text(max_size=4) | _json_values,
        "outputs": st.lists(st.fixed_dictionaries({"name": st.text(max_size=6) | _json_values}), max_size=2)
        | _json_values,
        "parameters": st.fixed_dictionaries(
            {}, optional={"timeout": st.integers(-5, 5) | _json_values, "binary_data_output": st.booleans()}
        ),
    },
)
_bodies = st.one_of(
    _request.map(lambda r: (json.dumps(r).encode(), None)),
    st.tuples(_request.map(lambda r: json.dumps(r).encode()), st.binary(max_size=64)).map(
        lambda parts: (parts[0] + parts[1], len(parts[0]))
    ),
    st.tuples(st.binary(max_size=200), st.none() | st.integers(-5, 210)),
    st.text(max_size=200).map(lambda t: (t.encode("utf-8", "surrogatepass"), None)),
)


@pytest.fixture(scope="module")
def served_models(bert_runner: Runner, embed_package: Path) -> list[Any]:
    """The raw tiny BERT and an embedding text model, as the server builds them (no HTTP)."""
    from toolkit.pipelines import TextTokenizer

    engine = Engine("bert", "fp32", bert_runner, {"input_ids": 0}, ("batch_size", "sequence_length"))
    package = ModelPackage.open(embed_package)
    tokenizer = TextTokenizer(package.asset("tokenizer.json"), 64)
    return [RawModel(engine, {"input_ids": (0, tokenizer.vocab_size - 1)}), PipelineModel(task_for(package), engine)]  # fmt: skip


def test_fuzzed_requests_decode_or_are_client_errors(served_models: list[Any]) -> None:
    @settings(suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large], deadline=None)
    @given(_bodies, st.sampled_from(served_models))
    def decode(body_and_length: tuple[bytes, int | None], model: Any) -> None:
        body, header_length = body_and_length
        try:
            request = decode_request(body, header_length)
            model.prepare(request)
        except BadInputError as exc:
            response = error_response(exc)
            assert response.status_code in (400, 413)
            json.loads(response.body)

    decode()


@pytest.mark.parametrize(("datatype", "value"), [("FP32", 1e300), ("FP16", 70000.0), ("INT8", 300)])
def test_json_values_outside_the_datatype_are_400_not_wrapped(datatype: str, value: float) -> None:
    body = json.dumps({"inputs": [{"name": "x", "datatype": datatype, "shape": [2], "data": [1, value]}]})
    with pytest.raises(BadInputError, match=f"outside the range of {datatype}"):
        decode_request(body.encode(), None)
    ok = json.dumps({"inputs": [{"name": "x", "datatype": datatype, "shape": [2], "data": [1, 2]}]})
    assert decode_request(ok.encode(), None).inputs[0].data.tolist() == [1, 2]


@pytest.mark.parametrize("where", ["variant", "subgraph"])
def test_a_manifest_key_with_a_newline_is_named_on_one_line(tiny_bert_package: Path, where: str) -> None:
    data = _manifest_dict(tiny_bert_package)
    if where == "variant":
        data["variants"]["line\nbreak"] = 5
    else:
        data["variants"]["fp32"]["subgraphs"] = {"line\nbreak": None}
    with pytest.raises(BadModelError) as raised:
        Manifest.from_json(json.dumps(data), "edge.json")
    assert "\n" not in str(raised.value)
    assert "'line\\nbreak'" in str(raised.value)


@pytest.mark.parametrize("field", ["mean", "std"])
@pytest.mark.parametrize(
    "value", [10**400, -(10**400), float("nan"), float("inf")], ids=["1e400", "-1e400", "nan", "inf"]
)
def test_preprocessing_numbers_past_float_range_name_the_field(
    tiny_vit_package: Path, field: str, value: float
) -> None:
    # JSON's 10**400 parses as a Python int that math.isfinite cannot take: it was an OverflowError, answered only
    # as "a malformed field", not as the field it is
    data = _manifest_dict(tiny_vit_package)
    pre = data["preprocessing"]
    pre[field] = [value, *pre[field][1:]]
    with pytest.raises(BadModelError, match=r"preprocessing\.mean/std") as raised:
        Manifest.from_json(json.dumps(data), "edge.json")
    assert "\n" not in str(raised.value)
