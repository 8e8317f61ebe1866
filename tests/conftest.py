"""Shared fixtures: databases and worker backends.

Every store test runs on a real SQLite file and on a real PostgreSQL; every test that takes
``backend_name`` runs its workers on both backends, locally (forkserver) and on a real Ray cluster
(one local cluster for the session; skipped without Ray, failed with ``ISOLANE_REQUIRE_RAY=1``).

``db_url`` is parametrized ``sqlite`` / ``postgres``. The PostgreSQL server is
``postgresql+psycopg://postgres@127.0.0.1:5432/test`` unless ``ISOLANE_TEST_PG_URL`` names
another; each test gets a schema of its own (through ``search_path``, so the migrations run in
it too), dropped at teardown. An unreachable server skips the postgres tests, or fails them when
``ISOLANE_REQUIRE_POSTGRES=1``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import URL

from isolane.tracking import Store
from isolane.tracking.urls import display_url, normalize_url
from tests.cdp import Chromium, find_chromium
from tests.helpers import ProcessWatch, import_ray
from tests.pgcluster import PgCluster, PgClusterUnavailable

PG_DEFAULT_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
PG_URL_ENV = "ISOLANE_TEST_PG_URL"
REQUIRE_PG_ENV = "ISOLANE_REQUIRE_POSTGRES"


@pytest.fixture(scope="session")
def pg_admin_url() -> URL:
    """The PostgreSQL server the tests use (its database must exist)."""
    return normalize_url(os.environ.get(PG_URL_ENV) or PG_DEFAULT_URL)


@pytest.fixture(scope="session")
def pg_admin(pg_admin_url: URL) -> Iterator[sa.Engine]:
    """An autocommit engine on the test server, or a skip (a failure when it is required)."""
    engine = sa.create_engine(pg_admin_url, isolation_level="AUTOCOMMIT", pool_pre_ping=True,
                              connect_args={"connect_timeout": 5})
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")
    except sa.exc.DBAPIError as exc:
        engine.dispose()
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
        message = (f"PostgreSQL not reachable at {display_url(pg_admin_url)}: {reason}; "
                   f"set {PG_URL_ENV}")
        if os.environ.get(REQUIRE_PG_ENV) == "1":
            pytest.fail(message)
        pytest.skip(message)
    yield engine
    engine.dispose()


@contextmanager
def fresh_pg_schema(admin: sa.Engine, admin_url: URL) -> Iterator[str]:
    """A URL whose ``search_path`` is a new, empty schema; the schema is dropped on exit."""
    schema = f"isolane_test_{uuid.uuid4().hex[:12]}"
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
    url = admin_url.update_query_dict({"options": f"-csearch_path={schema}"})
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql("SET lock_timeout = '10s'")
            conn.exec_driver_sql(f'DROP SCHEMA "{schema}" CASCADE')


@pytest.fixture
def pg_schema_url(pg_admin: sa.Engine, pg_admin_url: URL) -> Iterator[str]:
    """A URL whose ``search_path`` is a fresh schema of this test only; dropped afterwards."""
    with fresh_pg_schema(pg_admin, pg_admin_url) as url:
        yield url


@pytest.fixture
def pg_cluster() -> Iterator[PgCluster]:
    """A private PostgreSQL server, started, that the test may stop and start again (see
    :mod:`tests.pgcluster`); never the machine's own. Skipped with the reason when it cannot be
    made here (a failure when ``ISOLANE_REQUIRE_POSTGRES=1``); always stopped at teardown."""
    parent = Path(tempfile.mkdtemp(prefix="isolane-pg-"))
    parent.chmod(0o755)  # the server may run as another user (`postgres`, when we are root)
    cluster: PgCluster | None = None
    try:
        try:
            cluster = PgCluster.create(parent / "cluster")
            cluster.start()
        except PgClusterUnavailable as exc:
            message = f"no private PostgreSQL cluster: {exc}"
            if os.environ.get(REQUIRE_PG_ENV) == "1":
                pytest.fail(message)
            pytest.skip(message)
        yield cluster
    finally:
        if cluster is not None:
            cluster.destroy()
        shutil.rmtree(parent, ignore_errors=True)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A URL of an empty database: a SQLite file in ``tmp_path`` or a fresh PostgreSQL schema."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'isolane.db'}"
    url: str = request.getfixturevalue("pg_schema_url")
    return url


@pytest.fixture
def store(db_url: str) -> Iterator[Store]:
    """A migrated, open store on ``db_url``; closed after the test."""
    with Store.open(db_url) as opened:
        yield opened


@pytest.fixture
def anyio_backend() -> str:
    """Async tests run on asyncio (the backend isolane's executor is exercised on)."""
    return "asyncio"


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """An empty isolane home directory for one test."""
    return tmp_path / "home"


@pytest.fixture(scope="session")
def ray_session() -> Iterator[Any]:
    """One local Ray cluster for the whole session, shut down at its end."""
    ray = import_ray()
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
                 logging_level="warning")
    yield ray
    if ray.is_initialized():
        ray.shutdown()


@pytest.fixture(params=["local", pytest.param("ray", marks=pytest.mark.ray)])
def backend_name(request: pytest.FixtureRequest) -> str:
    """The worker backend a contract test runs on: ``local``, then ``ray`` (see
    :func:`tests.helpers.executor_on`)."""
    if request.param == "ray":
        ray = request.getfixturevalue("ray_session")
        if not ray.is_initialized():  # the multi-node test ran and took the session's cluster down
            ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
                     logging_level="warning")
    return str(request.param)


@pytest.fixture
def chromium(tmp_path: Path) -> Iterator[Chromium]:
    """Debian's chromium, headless, with a profile of its own (the page tests); skipped where it
    is absent, a failure with ``ISOLANE_REQUIRE_BROWSER=1`` (as ``.ci/run`` sets)."""
    binary = find_chromium()
    if binary is None:
        reason = "Debian's chromium is not installed (apt-get install chromium; .ci/run does it)"
        if os.environ.get("ISOLANE_REQUIRE_BROWSER") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    with Chromium(binary, tmp_path / "chromium-profile") as browser:
        yield browser


@pytest.fixture
def process_watch() -> ProcessWatch:
    """What the test starts that outlives it: ``assert not process_watch.left_behind()``."""
    return ProcessWatch()
