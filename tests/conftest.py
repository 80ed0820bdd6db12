from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from repos import build_broken_repository, build_test_repository
from servers import KilnProcess


@pytest.fixture(scope="session")
def test_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_test_repository(tmp_path_factory.mktemp("repo"))


@pytest.fixture(scope="session")
def broken_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_broken_repository(tmp_path_factory.mktemp("broken"))


@pytest.fixture(scope="session")
def server(
    test_repo: Path, broken_repo: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[KilnProcess]:
    """One real server for the session: the test repository plus a repository of models that fail to load."""
    proc = KilnProcess(
        [test_repo, broken_repo], "--strict-readiness", "false", log_dir=tmp_path_factory.mktemp("logs")
    )
    proc.start()
    yield proc
    code = proc.stop()
    assert code == 0, f"server exited with {code}:\n{proc.log()}"
