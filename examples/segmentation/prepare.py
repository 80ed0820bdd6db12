"""Write the PP-OCRv4 DB text-segmentation model (pretrained) into a Kiln model repository.

    python examples/segmentation/prepare.py REPO

Copies the ONNX model shipped in ``rapidocr_onnxruntime`` (input ``image``, output ``probability``: the per-pixel
probability of text) and writes ``REPO/text_segmenter/{config.pbtxt, 1/model.onnx}``. Also writes the server-side
pipeline ``segment_text`` (an ensemble: image bytes in, results out) and its Python pre-/post-processing steps.
Needs ``pip install 'kiln[examples]'``; downloads nothing.
"""

import sys

from kiln.vision import zoo
from kiln.vision.cli import prepare_main

if __name__ == "__main__":
    sys.exit(prepare_main([zoo.write_segmenter, zoo.write_segmentation_pipeline], __doc__))
