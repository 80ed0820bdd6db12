"""python -m kiln.examples DIR: write the example model repository into DIR."""

import sys
from pathlib import Path

from kiln.examples import build_example_repository

if len(sys.argv) != 2:
    sys.exit("usage: python -m kiln.examples DIR")
print(build_example_repository(Path(sys.argv[1])))
