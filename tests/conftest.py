"""Shared fixtures: temporary registry databases on SQLite and on a real PostgreSQL server.

The PostgreSQL server is started once per session with the server's own initdb/pg_ctl into a
temporary directory (`registry.store.pgserver`). Without PostgreSQL binaries its tests are
skipped, unless REGISTRY_REQUIRE_POSTGRES=1 (set in CI), which turns the skip into a failure.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

REQUIRE_POSTGRES = os.environ.get("REGISTRY_REQUIRE_POSTGRES", "") == "1"
# Third-party key listings live in shared/, beside the repository (CI clones main there).
REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference"


def reference_text(listing: str, covered_by: str = "") -> str:
    """The text of a reference listing; skips the test where shared/ is not checked out beside
    the repository, naming what still checks the same thing (`covered_by`)."""
    path = REFERENCE / listing
    if not path.is_file():
        pytest.skip(f"{path} is not checked out" + (f" ({covered_by})" if covered_by else ""))
    return path.read_text(encoding="utf-8")


@pytest.fixture(autouse=True)
def _isolated_registry_env(monkeypatch, tmp_path):
    """No test reads REGISTRY_DB from the caller or writes the user's default database."""
    monkeypatch.delenv("REGISTRY_DB", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg-data"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))  # convert's plan cache, too
    monkeypatch.delenv("REGISTRY_CACHE_DIR", raising=False)


def started_temp_postgres():
    """A started `TempPostgres`; skips the test without PostgreSQL's binaries (fails it in CI)."""
    from registry.store.pgserver import TempPostgres, find_bin_dir

    if find_bin_dir() is None:
        message = "PostgreSQL server binaries (initdb, pg_ctl) not found"
        if REQUIRE_POSTGRES:
            pytest.fail(message + " and REGISTRY_REQUIRE_POSTGRES=1")
        pytest.skip(message)
    return TempPostgres().start()


@pytest.fixture(scope="session")
def pg_server():
    """A running throwaway PostgreSQL server, stopped at the end of the session."""
    server = started_temp_postgres()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def one_thread():
    """torch on one intra-op thread for a module's tests (opt in:
    `pytestmark = pytest.mark.usefixtures("one_thread")`). Tiny models gain nothing from intra-op
    threads, and on a shared 2-core machine spinning OpenMP workers made such tests several times
    slower."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def sqlite_url(tmp_path) -> str:
    """URL of a registry SQLite file that does not exist yet."""
    return f"sqlite:///{tmp_path / 'registry.db'}"


@pytest.fixture
def pg_url(pg_server) -> str:
    """URL of a new, empty PostgreSQL database."""
    return pg_server.create_database(f"t_{uuid.uuid4().hex[:12]}")


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request) -> str:
    """An empty database URL, once per backend."""
    return request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "pg_url")


@pytest.fixture
def reg(db_url):
    """An open `Registry` at head on each backend."""
    from registry.store import open_registry

    registry = open_registry(db_url, upgrade=True)
    yield registry
    registry.close()


@dataclass(frozen=True)
class TinyMLPConfig:
    width: int = 4
    depth: int = 2
    norm: str = "layer"


TINY_FAMILY = "test-tiny-mlp"


@pytest.fixture
def tiny_family(monkeypatch) -> str:
    """Name of a tiny test family (Linear layers and a norm), registered for this test only."""
    from registry.families import _FAMILIES, register_family

    # Through monkeypatch, so every other patch of this test is undone before the family is removed.
    monkeypatch.setitem(_FAMILIES, TINY_FAMILY, None)

    @register_family(TINY_FAMILY, config=TinyMLPConfig, description="tiny MLP for store tests")
    def build_tiny_mlp(config: TinyMLPConfig):
        from torch import nn

        layers: list = []
        for _ in range(config.depth):
            layers.append(nn.Linear(config.width, config.width))
            layers.append(nn.LayerNorm(config.width) if config.norm == "layer" else nn.RMSNorm(config.width))
        return nn.Sequential(*layers)

    return TINY_FAMILY
