"""detect: `ObjectDetector.detect` against transformers' processors, models and ``post_process_object_detection``
(tiny random DETR with a ResNet backbone, YOLOS, RT-DETR), and a YOLO-layout module exported here and packaged
with `edge convert model.onnx --task detect --labels`, against a reference NMS written from its definition."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from converters import ConvertOptions, convert
from converters.samples import synthetic_photo
from tests.conftest import build_offline_model
from toolkit import BadInputError, ModelPackage, load
from toolkit.cli import edge
from toolkit.manifest import ImagePreprocessing
from toolkit.tasks.detect import Detection, ObjectDetector, box_iou, match_detections

# (height, width): wider, taller and square, so the aspect-preserving resizes and the letterbox all do work
SIZES = [(70, 130), (120, 60), (64, 64)]
LABELS = ("cat", "dog", "car")


def _photos(folder: Path, seed: int = 11) -> list[Path]:
    from PIL import Image

    rng = np.random.default_rng(seed)
    photos = []
    for i, (height, width) in enumerate(SIZES):
        path = folder / f"photo{i}.png"
        Image.fromarray(synthetic_photo(height, width, rng)).save(path)
        photos.append(path)
    return photos


def _box(values: Any) -> tuple[float, float, float, float]:
    x0, y0, x1, y1 = (float(v) for v in values)
    return x0, y0, x1, y1


def _spread_heads(model: object, scale: float) -> None:
    """Random heads give near-uniform scores; widen the classifier so a threshold keeps some and drops some."""
    import torch

    torch.manual_seed(3)
    head = getattr(model, "class_labels_classifier", None)
    if head is not None:
        with torch.no_grad():
            for parameter in head.parameters():
                parameter.normal_(0, scale)


def _build(kind: str, folder: Path) -> Path:
    """A tiny random transformers detector of `kind` saved with its image processor."""
    import torch
    import transformers as tf

    torch.manual_seed(0)
    labels = {"id2label": dict(enumerate(LABELS)), "label2id": {n: i for i, n in enumerate(LABELS)}}
    if kind == "detr":
        config = tf.DetrConfig(
            use_timm_backbone=False,
            use_pretrained_backbone=False,
            backbone_config=tf.ResNetConfig(
                embedding_size=8, hidden_sizes=[8, 16, 16, 16], depths=[1, 1, 1, 1], out_features=["stage4"]
            ),
            d_model=16,
            encoder_layers=1,
            decoder_layers=1,
            encoder_attention_heads=2,
            decoder_attention_heads=2,
            encoder_ffn_dim=32,
            decoder_ffn_dim=32,
            num_queries=12,
            **labels,
        )
        model: Any = tf.DetrForObjectDetection(config).eval()
        processor: Any = tf.DetrImageProcessor(size={"shortest_edge": 64, "longest_edge": 96})
    else:
        config = tf.YolosConfig(
            image_size=[64, 96],
            patch_size=16,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            num_detection_tokens=8,
            **labels,
        )
        model = tf.YolosForObjectDetection(config).eval()
        processor = tf.YolosImageProcessor(size={"shortest_edge": 64, "longest_edge": 96})
    _spread_heads(model, 2.0)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def detectors(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    """kind -> (the HF directory, its package): DETR and YOLOS built here, RT-DETR from its recipe's offline build."""
    root = tmp_path_factory.mktemp("detectors")
    built = {}
    for kind in ("detr", "yolos"):
        source = _build(kind, root / kind)
        built[kind] = (source, convert(str(source), root / f"{kind}-pkg").path)
    source = build_offline_model("rt-detr-r18", root / "rt-detr", seed=2)
    built["rt-detr"] = (
        source,
        convert(str(source), root / "rt-detr-pkg", ConvertOptions(recipe="rt-detr-r18")).path,
    )
    return built


@pytest.fixture(scope="session")
def photos(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return _photos(tmp_path_factory.mktemp("detect-photos"))


def _transformers_detections(source: Path, photo: Path, threshold: float) -> list[Detection]:
    import torch
    from PIL import Image
    from transformers import AutoImageProcessor, AutoModelForObjectDetection

    processor = AutoImageProcessor.from_pretrained(source, use_fast=False)
    model = AutoModelForObjectDetection.from_pretrained(source).eval()
    image = Image.open(photo).convert("RGB")
    with torch.no_grad():
        outputs = model(**processor(images=[image], return_tensors="pt"))
    (found,) = processor.post_process_object_detection(
        outputs, threshold=threshold, target_sizes=[(image.height, image.width)]
    )
    names = model.config.id2label
    detections = [
        Detection(names[int(label)], float(score), _box(box), int(label))
        for score, label, box in zip(found["scores"], found["labels"], found["boxes"], strict=True)
    ]
    return sorted(detections, key=lambda d: -d.score)


def _threshold_between(scores: list[float]) -> float:
    """A threshold near the median score, midway in a gap between scores (float32 vs float64 cannot flip a side)."""
    ordered = sorted(scores)
    middle = len(ordered) // 2
    for i in sorted(range(len(ordered) - 1), key=lambda i: abs(i - middle)):
        if ordered[i + 1] - ordered[i] > 1e-3:
            return (ordered[i] + ordered[i + 1]) / 2
    raise AssertionError(f"no gap between the scores {ordered}")


@pytest.mark.parametrize("kind", ["detr", "yolos", "rt-detr"])
def test_detect_equals_post_process_object_detection(
    kind: str, detectors: dict[str, tuple[Path, Path]], photos: list[Path]
) -> None:
    source, package = detectors[kind]
    with ObjectDetector.load(package, threads=1) as detector:
        everything = detector.detect(photos, threshold=0.0)
        threshold = _threshold_between([d.score for found in everything for d in found])
        ours = detector.detect(photos, threshold=threshold, batch_size=2)
        best = detector.detect(photos, threshold=0.0, top_k=2)
    kept = dropped = 0
    for photo, got, every, top in zip(photos, ours, everything, best, strict=True):
        want = _transformers_detections(source, photo, threshold)
        assert [d.label for d in got] == [d.label for d in want]
        np.testing.assert_allclose([d.score for d in got], [d.score for d in want], atol=1e-5, rtol=0)
        # the export's own tolerance (1e-4 on relative boxes; YOLOS interpolates its position embeddings) in pixels
        size = max(SIZES[photos.index(photo)])
        np.testing.assert_allclose(
            np.reshape([d.box for d in got], (-1, 4)),
            np.reshape([d.box for d in want], (-1, 4)),
            atol=1e-4 * size + 1e-3,
        )
        assert top == every[:2]
        kept, dropped = kept + len(got), dropped + len(every) - len(got)
    assert kept > 0, "the threshold should keep some detections"
    assert dropped > 0, "the threshold should drop some detections"
    assert isinstance(load(package), ObjectDetector)


# -- a YOLO-layout module (the Ultralytics export's output), exported here -----------------------------------

INPUT = 64  # the module's square input
YOLO_CLASSES = 3


def _yolo_module() -> Any:
    import torch

    class TinyYolo(torch.nn.Module):
        """Per 8x8 cell: a box (centre, size in input pixels) and per-class sigmoid scores: [N, 4 + C, cells]."""

        def __init__(self) -> None:
            super().__init__()
            self.features = torch.nn.Conv2d(3, 8, kernel_size=8, stride=8)
            self.head = torch.nn.Conv2d(8, 4 + YOLO_CLASSES, kernel_size=1)

        def forward(self, images: torch.Tensor) -> torch.Tensor:
            raw = self.head(torch.relu(self.features(images))).flatten(2)  # [N, 4 + C, cells]
            cells = raw.shape[-1]
            side = int(cells**0.5)
            index = torch.arange(cells, dtype=torch.float32)
            grid_x, grid_y = (index % side + 0.5) * 8, (index // side + 0.5) * 8
            cx = grid_x + 8 * torch.tanh(raw[:, 0])
            cy = grid_y + 8 * torch.tanh(raw[:, 1])
            w = 24 * torch.sigmoid(raw[:, 2]) + 2
            h = 24 * torch.sigmoid(raw[:, 3]) + 2
            return torch.cat([torch.stack([cx, cy, w, h], 1), torch.sigmoid(3 * raw[:, 4:])], 1)

    torch.manual_seed(5)
    return TinyYolo().eval()


@pytest.fixture(scope="session")
def yolo(tmp_path_factory: pytest.TempPathFactory) -> tuple[object, Path, Path]:
    """(the module, its exported ONNX file, the package `edge convert model.onnx --task detect` made)."""
    import torch

    root = tmp_path_factory.mktemp("yolo")
    module = _yolo_module()
    onnx_file = root / "tiny-yolo.onnx"
    torch.onnx.export(
        module,
        (torch.zeros(1, 3, INPUT, INPUT),),
        str(onnx_file),
        input_names=["images"],
        output_names=["output0"],
        dynamic_axes={"images": {0: "batch"}, "output0": {0: "batch"}},
        dynamo=False,
    )
    labels = root / "labels.txt"
    labels.write_text("\n".join(LABELS) + "\n", encoding="utf-8")
    result = CliRunner().invoke(
        edge,
        ["convert", str(onnx_file), "-o", str(root / "pkg"), "--task", "detect", "--labels", str(labels)],
    )
    assert result.exit_code == 0, result.output
    return module, onnx_file, root / "pkg"


def _reference_yolo(
    module: object, photo: Path, threshold: float, iou: float
) -> list[tuple[int, float, list[float]]]:
    """From the definition: letterbox (scale to fit, centre, grey 114), 0..1 pixels, best class per anchor over
    the threshold, greedy NMS within each class, boxes shifted and scaled back and clipped to the image."""
    import torch
    from PIL import Image

    image = Image.open(photo).convert("RGB")
    gain = min(INPUT / image.height, INPUT / image.width)
    width, height = round(image.width * gain), round(image.height * gain)
    left, top = round((INPUT - width) / 2 - 0.1), round((INPUT - height) / 2 - 0.1)
    canvas = np.full((INPUT, INPUT, 3), 114, dtype=np.uint8)
    canvas[top : top + height, left : left + width] = np.asarray(
        image.resize((width, height), Image.BILINEAR)
    )
    pixels = torch.from_numpy(canvas.astype(np.float32) / 255).permute(2, 0, 1)[None]
    with torch.no_grad():
        rows = module(pixels)[0].T.numpy().astype(np.float64)
    found = []
    for cls in range(YOLO_CLASSES):
        mine = rows[(rows[:, 4:].argmax(1) == cls) & (rows[:, 4:].max(1) > threshold)]
        mine = mine[np.argsort(-mine[:, 4 + cls], kind="stable")]
        boxes = np.stack(
            [
                mine[:, 0] - mine[:, 2] / 2,
                mine[:, 1] - mine[:, 3] / 2,
                mine[:, 0] + mine[:, 2] / 2,
                mine[:, 1] + mine[:, 3] / 2,
            ],
            1,
        )
        alive = list(range(len(mine)))
        while alive:
            first, alive = alive[0], alive[1:]
            box = (boxes[first] - [left, top, left, top]) / gain
            box = np.clip(box, 0, [image.width, image.height, image.width, image.height])
            found.append((cls, float(mine[first, 4 + cls]), box.tolist()))
            alive = [j for j in alive if box_iou(boxes[first : first + 1], boxes[j : j + 1])[0, 0] <= iou]
    return sorted(found, key=lambda f: -f[1])


def test_yolo_layout_equals_reference_nms(yolo: tuple[object, Path, Path], photos: list[Path]) -> None:
    module, _, package = yolo
    manifest = ModelPackage.open(package).manifest
    assert manifest.task == "detect"
    assert manifest.labels == LABELS
    assert manifest.variants["fp32"].validation is not None
    assert manifest.variants["fp32"].validation.passed
    suppressed = 0
    with ObjectDetector.load(package) as detector:
        for photo in photos:
            for threshold, iou in ((0.5, 0.7), (0.3, 0.3)):
                got = detector.detect([photo], threshold=threshold, iou_threshold=iou)[0]
                want = _reference_yolo(module, photo, threshold, iou)
                assert [(d.label_id, d.label) for d in got] == [(c, LABELS[c]) for c, _, _ in want]
                np.testing.assert_allclose([d.score for d in got], [s for _, s, _ in want], atol=1e-5)
                np.testing.assert_allclose(
                    np.reshape([d.box for d in got], (-1, 4)),
                    np.reshape([b for _, _, b in want], (-1, 4)),
                    atol=1e-2,
                )
            unsuppressed = detector.detect([photo], threshold=0.3, iou_threshold=1.0)[0]
            suppressed += len(unsuppressed) - len(
                detector.detect([photo], threshold=0.3, iou_threshold=0.3)[0]
            )
    assert suppressed > 0, "NMS should have suppressed overlapping boxes"


def test_match_detections() -> None:
    a = Detection("cat", 0.9, (0, 0, 10, 10), 0)
    shifted = Detection("cat", 0.8, (2, 0, 12, 10), 0)  # IoU 8/12 with a
    far = Detection("cat", 0.8, (6, 0, 16, 10), 0)  # IoU 4/16
    other = Detection("dog", 0.8, (0, 0, 10, 10), 1)
    assert match_detections([shifted], [a]) == 1
    assert match_detections([far], [a]) == 0
    assert match_detections([other], [a]) == 0
    assert match_detections([shifted], [a, a]) == 1  # one-to-one


def test_edge_run_prints_and_draws(
    yolo: tuple[object, Path, Path], photos: list[Path], tmp_path: Path
) -> None:
    from PIL import Image

    _, _, package = yolo
    out = tmp_path / "annotated.png"
    result = CliRunner().invoke(edge, ["run", str(package), "--image", str(photos[0]), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert f"{photos[0]}: " in result.output
    assert "detection" in result.output
    with Image.open(out) as drawn:
        assert drawn.size == (SIZES[0][1], SIZES[0][0])
        assert not np.array_equal(
            np.asarray(drawn.convert("RGB")), np.asarray(Image.open(photos[0]).convert("RGB"))
        )
    data = json.loads(
        CliRunner().invoke(edge, ["run", str(package), "--image", str(photos[0]), "--json"]).output
    )
    found = ObjectDetector.load(package).detect([photos[0]])[0]
    assert [d["label"] for d in data["detections"][0]] == [d.label for d in found]


def test_quantized_detector_reports_detection_agreement(
    yolo: tuple[object, Path, Path], tmp_path: Path
) -> None:
    import shutil

    from converters import quantize

    _, _, package = yolo
    copy = tmp_path / "pkg"
    shutil.copytree(package, copy)
    variant = quantize(ModelPackage.open(copy), "dynamic-int8").variant
    assert variant.validation is not None
    assert variant.validation.metric == "detection_agreement"
    assert 0.0 <= variant.validation.value <= 1.0


# -- bad input: one-line errors, exit 2 ----------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_bad_inputs_are_one_line_errors(yolo: tuple[object, Path, Path], tmp_path: Path) -> None:
    import torch

    _, onnx_file, package = yolo
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png at all")
    runner = CliRunner()
    result = runner.invoke(edge, ["run", str(package), "--image", str(broken)])
    assert result.exit_code == 2
    assert "could not be decoded" in result.output
    with pytest.raises(BadInputError, match="could not be decoded"):
        ObjectDetector.load(package).detect([broken])

    wrong = tmp_path / "labels.txt"
    wrong.write_text("cat\ndog\n", encoding="utf-8")
    result = runner.invoke(
        edge,
        ["convert", str(onnx_file), "-o", str(tmp_path / "p1"), "--task", "detect", "--labels", str(wrong)],
    )
    assert result.exit_code == 2
    assert "has 2 names but" in result.output
    assert "scores 3 classes" in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "p1").exists()

    classifier = tmp_path / "classifier.onnx"
    torch.onnx.export(
        torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 5)),
        (torch.zeros(1, 3, 8, 8),),
        str(classifier),
        input_names=["images"],
        output_names=["logits"],
        dynamo=False,
    )
    result = runner.invoke(edge, ["convert", str(classifier), "-o", str(tmp_path / "p2"), "--task", "detect"])
    assert result.exit_code == 2
    assert "not a detector's" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_served_image_model_equals_detect(yolo: tuple[object, Path, Path], photos: list[Path]) -> None:
    """`edge serve`'s ``<name>-image`` model: encoded files in (BYTES), the pipeline's detections out (JSON)."""
    from toolkit.serve.registry import ModelRegistry
    from toolkit.serve.tensors import InferenceRequest, RequestInput

    _, _, package = yolo
    registry = ModelRegistry.load([package])
    model = registry.get(f"{ModelPackage.open(package).manifest.name}-image", None)
    blobs = np.empty(1, dtype=object)
    blobs[:] = [photos[1].read_bytes()]
    job = model.prepare(InferenceRequest((RequestInput("image", "BYTES", (1,), blobs),)))
    served = job.finish(model.engine.runner.run(job.feeds))["detections"]
    want = ObjectDetector.load(package).detect([photos[1]])[0]
    got = json.loads(served[0])
    assert [d["label"] for d in got] == [d.label for d in want]
    np.testing.assert_allclose([d["box"] for d in got], [d.box for d in want], atol=1e-4)
    broken = np.empty(1, dtype=object)
    broken[:] = [b"not an image"]
    with pytest.raises(BadInputError, match="could not be decoded"):
        model.prepare(InferenceRequest((RequestInput("image", "BYTES", (1,), broken),)))


def test_a_served_detr_takes_images_of_different_sizes_in_one_request(
    detectors: dict[str, tuple[Path, Path]], photos: list[Path]
) -> None:
    """A DETR keeps each image's aspect ratio: one request's images of different sizes run as separate runs
    (two same-size images share one), and each image's detections equal `detect` on it alone."""
    from fastapi.testclient import TestClient

    from toolkit.serve.app import create_app
    from toolkit.serve.kserve.protocol import decode_response, encode_request
    from toolkit.serve.registry import LoadOptions, ModelRegistry
    from toolkit.serve.tensors import InferenceRequest, RequestInput

    _, package = detectors["detr"]
    sent = [photos[0], photos[1], photos[0], photos[2]]
    blobs = np.empty(len(sent), dtype=object)
    blobs[:] = [photo.read_bytes() for photo in sent]
    registry = ModelRegistry.load([package], LoadOptions(threads=1))
    name = f"{ModelPackage.open(package).manifest.name}-image"
    job = registry.get(name, None).prepare(
        InferenceRequest((RequestInput("image", "BYTES", (len(sent),), blobs),))
    )
    assert [len(next(iter(feeds.values()))) for feeds in (job.feeds, *job.more_runs)] == [2, 1, 1]
    request = encode_request({"image": blobs})
    with TestClient(create_app(registry)) as client:
        answer = client.post(f"/v2/models/{name}/infer", content=request.body, headers=request.headers())
    assert answer.status_code == 200, answer.text
    _, outputs = decode_response(answer.content, int(answer.headers["Inference-Header-Content-Length"]))
    with ObjectDetector.load(package, threads=1) as detector:
        for photo, served in zip(sent, outputs["detections"], strict=True):
            want = detector.detect([photo], threshold=0.5)[0]
            got = json.loads(served)
            assert [d["label"] for d in got] == [d.label for d in want]
            np.testing.assert_allclose([d["box"] for d in got], [d.box for d in want], atol=1e-3)
    assert {len(json.loads(served)) for served in outputs["detections"]} != {0}, (
        "some image must have detections"
    )


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_onnx_file_with_a_symbolic_size_takes_it_from_input(tmp_path: Path) -> None:
    import torch

    class AnySize(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.head = torch.nn.Conv2d(3, 4 + YOLO_CLASSES, kernel_size=8, stride=8)

        def forward(self, images: torch.Tensor) -> torch.Tensor:
            raw = self.head(images).flatten(2)
            return torch.cat([32 * torch.sigmoid(raw[:, :4]), torch.sigmoid(raw[:, 4:])], 1)

    onnx_file = tmp_path / "any-size.onnx"
    torch.onnx.export(
        AnySize().eval(),
        (torch.zeros(1, 3, 32, 32),),
        str(onnx_file),
        input_names=["images"],
        output_names=["output0"],
        dynamic_axes={"images": {0: "batch", 2: "height", 3: "width"}, "output0": {0: "batch", 2: "anchors"}},
        dynamo=False,
    )
    sized = convert(
        str(onnx_file),
        tmp_path / "sized",
        ConvertOptions(task="detect", inputs=("images:float32[batch,3,48,48]",)),
    )
    pre = sized.manifest.section(ImagePreprocessing)
    assert pre is not None
    assert (pre.size, pre.resize) == ((48, 48), "letterbox")
    validation = sized.manifest.variants["fp32"].validation
    assert validation is not None
    assert validation.passed
    default = convert(str(onnx_file), tmp_path / "default", ConvertOptions(task="detect")).manifest
    default_pre = default.section(ImagePreprocessing)
    assert default_pre is not None
    assert default_pre.size == (640, 640)


# -- hostile images against a real `edge serve` and `edge` (issue 21, rows 5 and 6) -------------------------


def _png(width: int, height: int, mode: str = "1") -> bytes:
    """A blank PNG: a 12000x12000 1-bit one is 17 KB and would decode to 432 MB of RGB."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new(mode, (width, height)).save(buffer, "PNG")
    return buffer.getvalue()


def _infer_images(url: str, model: str, images: list[bytes]) -> tuple[int, str]:
    """POST the images as one binary v2 request: (status, the error line or the detections JSON)."""
    import urllib.error
    import urllib.request

    from toolkit.serve.kserve.protocol import encode_request

    blobs = np.empty(len(images), dtype=object)
    blobs[:] = images
    encoded = encode_request({"image": blobs}, binary=True)
    request = urllib.request.Request(
        f"{url}/v2/models/{model}/infer", data=encoded.body, method="POST", headers=encoded.headers()
    )
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, response.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())["error"]


def _rss_mb(pid: int) -> float:
    import psutil

    return psutil.Process(pid).memory_info().rss / 2**20


def test_served_images_are_bounded_from_the_header_and_decoded_off_the_loop(
    yolo: tuple[object, Path, Path], tmp_path: Path
) -> None:
    import urllib.request
    from concurrent.futures import ThreadPoolExecutor

    from tests.serve_process import start_serve

    _, _, package = yolo
    model = f"{ModelPackage.open(package).manifest.name}-image"
    server = start_serve([package], ["--threads", "1"], tmp_path / "serve")
    try:
        assert _infer_images(server.url, model, [_png(64, 48, "RGB")])[0] == 200
        before = _rss_mb(server.process.pid)
        bomb = _png(12_000, 12_000)
        assert len(bomb) < 20_000
        with ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(lambda _: _infer_images(server.url, model, [bomb]), range(4)))
        for status, message in answers:
            assert status == 400, message
            assert message.startswith("input 'image' element 0 is 12000x12000 pixels, over the 40,000,000-pixel limit")  # fmt: skip
        assert _rss_mb(server.process.pid) - before < 300
        # a 1-pixel-high strip would letterbox to zero rows: a 400 naming the shape, not a 500
        status, message = _infer_images(server.url, model, [_png(1, 20_000, "RGB")])
        assert status == 400, message
        assert message.startswith("input 'image' element 0 is 1x20000 pixels, a side over 50 times the other")
        # a large image under the limit decodes on a worker thread: the health check is answered meanwhile
        large = _png(6_000, 6_000)
        order: list[str] = []
        with ThreadPoolExecutor(2) as pool:
            big = pool.submit(
                lambda: (_infer_images(server.url, model, [large, large]), order.append("image"))[0]
            )
            time.sleep(0.15)
            with urllib.request.urlopen(f"{server.url}/v2/health/live", timeout=60) as live:
                assert live.status == 200
            order.append("live")
            assert big.result(timeout=120)[0] == 200
        assert order[0] == "live"
        assert "Traceback" not in server.log.read_text(encoding="utf-8")
    finally:
        assert server.stop() == 0


def test_max_image_pixels_is_a_server_option(yolo: tuple[object, Path, Path], tmp_path: Path) -> None:
    from tests.serve_process import start_serve

    _, _, package = yolo
    model = f"{ModelPackage.open(package).manifest.name}-image"
    server = start_serve([package], ["--threads", "1", "--max-image-pixels", "10000"], tmp_path / "serve")
    try:
        status, message = _infer_images(server.url, model, [_png(64, 48, "RGB"), _png(101, 100, "RGB")])
        assert status == 400
        assert message.startswith("input 'image' element 1 is 101x100 pixels, over the 10,000-pixel limit")
        assert _infer_images(server.url, model, [_png(100, 100, "RGB")])[0] == 200
    finally:
        assert server.stop() == 0


def test_edge_run_of_a_degenerate_image_is_one_line_exit_2(yolo: tuple[object, Path, Path], tmp_path: Path) -> None:  # fmt: skip
    import subprocess
    import sys

    _, _, package = yolo
    strip = tmp_path / "strip.png"
    strip.write_bytes(_png(3000, 2, "RGB"))
    command = [sys.executable, "-c", "from toolkit.cli import main; main()", "run", str(package)]
    result = subprocess.run([*command, "--image", str(strip)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    output = (result.stdout + result.stderr).strip()
    assert len(output.splitlines()) == 1, output
    assert output.startswith(f"error: image '{strip}' is 3000x2 pixels, a side over 50 times the other")
