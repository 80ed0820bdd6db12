"""Accuracy on real data: train a small CNN on Fashion-MNIST here, build it FP32 / FP16 / INT8 with kiln build,
and report the test accuracy of each artifact on all 10,000 test images (the accuracy gate's own figures).

Data: the Debian package ``dataset-fashion-mnist`` (/usr/share/datasets/fashion-mnist/, 60k/10k labelled
images); ``bash bench/build_setup.sh`` installs it. Training: 3 epochs of Adam, batch 128, on the CPU.

Usage: .venv/bin/python bench/build_fashion_mnist.py [--epochs 3] [--calibration 512]
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
import time
from pathlib import Path

import numpy as np

from kiln.builder import BuildOptions, CalibrationMethod, CalibrationOptions, Precision, Target, build
from kiln.builder.cpu import int8_dot
from kiln.perf.bench import host

DATA = Path("/usr/share/datasets/fashion-mnist")
ROOT = Path(__file__).resolve().parent


def read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        raw = f.read()
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(dims)


def load(split: str) -> tuple[np.ndarray, np.ndarray]:
    images = read_idx(DATA / f"{split}-images-idx3-ubyte.gz").astype(np.float32)[:, None] / 255.0
    labels = read_idx(DATA / f"{split}-labels-idx1-ubyte.gz").astype(np.int64)
    return images, labels


def train(x: np.ndarray, y: np.ndarray, epochs: int, seed: int = 0):  # type: ignore[no-untyped-def]
    import torch
    from torch import nn

    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1),
        nn.BatchNorm2d(64),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(64 * 7 * 7, 128),
        nn.ReLU(),
        nn.Linear(128, 10),
    )
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    rng = np.random.default_rng(seed)
    for epoch in range(epochs):
        net.train()
        order = torch.from_numpy(rng.permutation(len(x)))
        t0, total = time.perf_counter(), 0.0
        for i in range(0, len(x), 128):
            idx = order[i : i + 128]
            opt.zero_grad()
            loss = nn.functional.cross_entropy(net(xt[idx]), yt[idx])
            loss.backward()
            opt.step()
            total += float(loss) * len(idx)
        print(f"epoch {epoch + 1}: loss {total / len(x):.4f} ({time.perf_counter() - t0:.0f}s)", flush=True)
    return net.eval()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--calibration", type=int, default=512, help="training images used for calibration")
    parser.add_argument(
        "--out", type=Path, default=ROOT / "results" / f"fashion_mnist-{time.strftime('%Y%m%d-%H%M%S')}"
    )
    args = parser.parse_args()
    if not DATA.is_dir():
        print(f"error: {DATA} missing; run bash bench/build_setup.sh (Debian package dataset-fashion-mnist)")
        return 1
    import torch

    torch.set_num_threads(2)
    out = args.out
    (out / "cal").mkdir(parents=True, exist_ok=True)
    (out / "test").mkdir(parents=True, exist_ok=True)
    x_train, y_train = load("train")
    x_test, y_test = load("t10k")
    t0 = time.perf_counter()
    net = train(x_train, y_train, args.epochs)
    train_s = time.perf_counter() - t0
    source = out / "fashion_cnn.onnx"
    torch.onnx.export(
        net,
        (torch.zeros(1, 1, 28, 28),),
        str(source),
        input_names=["image"],
        output_names=["logits"],
        dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}},
        opset_version=17,
        dynamo=False,
    )
    # calibration: a random subset of the training images; validation: all 10k test images with labels
    pick = np.random.default_rng(1).choice(len(x_train), args.calibration, replace=False)
    np.save(out / "cal" / "image.npy", x_train[pick])
    np.savez(out / "test" / "test.npz", image=x_test, labels=y_test)
    ort, ov, int8 = Target.ONNXRUNTIME, Target.OPENVINO, Precision.INT8
    # (label, target, precision, calibration method, reduce_range: None = the default for this CPU)
    runs = [
        ("onnxruntime fp32", ort, Precision.FP32, None, None),
        ("onnxruntime fp16", ort, Precision.FP16, None, None),
        ("onnxruntime int8 (defaults: minmax)", ort, int8, None, None),
        ("onnxruntime int8 (entropy)", ort, int8, CalibrationMethod.ENTROPY, None),
        ("onnxruntime int8 (percentile)", ort, int8, CalibrationMethod.PERCENTILE, None),
        (
            "onnxruntime int8 (minmax, 8-bit weights: --reduce-range off)",
            ort,
            int8,
            CalibrationMethod.MINMAX,
            False,
        ),
        ("openvino fp32", ov, Precision.FP32, None, None),
        ("openvino int8 (nncf)", ov, int8, None, None),
    ]
    rows = []
    for label, target, precision, method, reduce in runs:
        folder = label.split(":")[0].replace(" ", "_").replace("(", "").replace(")", "").replace(",", "")
        result = build(
            BuildOptions(
                source=source,
                output=out / "repo" / folder,
                precision=precision,
                target=target,
                calibration=CalibrationOptions(
                    data=out / "cal", method=method, max_samples=args.calibration, reduce_range=reduce
                ),
                validation_data=out / "test",
                accept_accuracy_drop=True,
                benchmark=False,
                progress=False,
            )
        )
        acc = result.accuracy
        stage = next((st for st in result.manifest["stages"] if st["name"].startswith("precision")), {})
        details = stage.get("details", {})
        rows.append(
            {
                "artifact": label,
                "accuracy": acc.accuracy,
                "fp32_reference_accuracy": acc.reference_accuracy,
                "drop_points": acc.accuracy_drop,
                "drop_ci": acc.accuracy_drop_ci,
                "accuracy_ci": acc.accuracy_ci,
                "top1_agreement": acc.outputs[0].top1_agreement,
                "gate_failures": acc.failures,
                "samples": acc.samples,
                "reduce_range": details.get("reduce_range"),
                "kept_in_float": details.get("kept_in_float", 0),
            }
        )
        print(f"{label}: {acc.accuracy:.2f}% (fp32 {acc.reference_accuracy:.2f}%)", flush=True)
    doc = {
        "host": {**host(), "int8_dot": int8_dot().value},
        "command": " ".join(sys.argv),
        "epochs": args.epochs,
        "train_seconds": round(train_s, 1),
        "calibration_images": args.calibration,
        "test_images": len(y_test),
        "results": rows,
    }
    (out / "results.json").write_text(json.dumps(doc, indent=2) + "\n")
    lines = [
        "| artifact | test accuracy (10k) [95 % CI] | drop vs FP32, points [95 % CI] | top-1 agreement with FP32 |",
        "|---|---:|---:|---:|",
    ]
    for r in rows:
        a, d = r["accuracy_ci"], r["drop_ci"]
        lines.append(
            f"| {r['artifact']} | {r['accuracy']:.2f} % [{a[0]:.2f}, {a[1]:.2f}] | {r['drop_points']:+.2f} "
            f"[{d[0]:+.2f}, {d[1]:+.2f}] | {r['top1_agreement']:.4f} |"
        )
    text = "\n".join(lines)
    (out / "results.md").write_text(text + "\n")
    print(text)
    print(f"trained {args.epochs} epochs in {train_s:.0f}s; results in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
