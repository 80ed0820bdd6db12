"""python -m kiln.examples DIR: write the example model repository into DIR (with the real EfficientNet-Lite0
classifier when the ``examples`` extra is installed)."""

import sys
from pathlib import Path

from kiln.examples import build_example_repository
from kiln.vision import zoo

if len(sys.argv) != 2:
    sys.exit("usage: python -m kiln.examples DIR")
print(build_example_repository(Path(sys.argv[1]), real_classifier=zoo.classifier_available()))
