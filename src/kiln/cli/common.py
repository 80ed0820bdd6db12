"""What several subcommands share (kept apart from ``cli.main`` so subcommands never import it)."""

from __future__ import annotations

import logging
import sys


def configure_logging(verbose: int) -> None:
    level = logging.DEBUG if verbose > 0 else logging.INFO
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr, force=True
    )
