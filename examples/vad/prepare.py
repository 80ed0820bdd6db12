"""Write Silero VAD (voice activity detection, pretrained) into a Kiln model repository, served with implicit state.

    python examples/vad/prepare.py REPO

Wraps the ONNX model shipped in ``silero-vad`` so its recurrent state and 64-sample context are batch-first
tensors the sequence batcher keeps between a sequence's requests, and writes ``REPO/silero_vad/{config.pbtxt,
1/model.onnx}`` (oldest strategy: concurrent streams batch together). ``make setup`` installs ``silero-vad``
(without its torch dependency); downloads nothing.
"""

import sys

from kiln.examples.vad import write_vad
from kiln.vision.cli import prepare_main

if __name__ == "__main__":
    sys.exit(prepare_main([write_vad], __doc__))
