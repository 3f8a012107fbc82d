"""PostgreSQL, the engine for a plant that outgrows one console: a real server (a cluster of the suite's own), the
same migrations, and two console instances on one shared subscription and one database: nothing lost and nothing
counted twice, across a restart of one of them."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import func, select

from console.store import db
from console.store import schema as s
from harness.broker import Broker, Collector
from harness.console import ConsoleProc
from harness.postgres import Postgres, binaries
from harness.units import SimUnit

pytestmark = pytest.mark.processes


@pytest.fixture(scope="module")
def postgres() -> Iterator[Postgres]:
    if binaries() is None:
        why = "PostgreSQL is not installed (make test installs Debian's postgresql when run as root)"
        if os.environ.get("CI") == "true":
            pytest.fail(why)
        pytest.skip(why)
    pg = Postgres().start()
    yield pg
    pg.stop()


def test_the_migrations_build_the_same_schema_on_postgresql(postgres: Postgres) -> None:
    engine = db.engine_for(postgres.url)
    assert db.migrate(engine) == "0006"
    with engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), s.metadata) == []
    engine.dispose()


def test_two_consoles_share_the_fleet_and_one_database(tmp_path: object, broker: Broker, postgres: Postgres) -> None:
    from pathlib import Path

    work = Path(str(tmp_path))
    one = ConsoleProc(work / "one", broker.port, instance="one", db_url=postgres.url).start()
    two = ConsoleProc(work / "two", broker.port, instance="two", db_url=postgres.url).start()
    engine = db.engine_for(postgres.url)
    try:
        pub = Collector(broker.port, "nothing/#", persistent=False)
        units = [SimUnit(pub.client, f"line{i}") for i in range(3)]
        sent = 0
        for round_ in range(300):
            for u in units:
                u.result(0.9 if round_ % 7 == 0 else 0.1, qos=1)
                sent += 1
            if round_ == 100:
                assert two.stop() == 0  # a restart in the middle of the stream
            if round_ == 180:
                two.start()
        for u in units:
            u.alert(u.result(0.95, qos=1))
            sent += 1

        def stored() -> int:
            with engine.connect() as conn:
                return int(conn.execute(select(func.count()).select_from(s.results)).scalar_one())

        deadline = time.monotonic() + 60
        while stored() < sent and time.monotonic() < deadline:
            time.sleep(0.2)
        assert stored() == sent, f"{stored()} of {sent} stored"
        with engine.connect() as conn:
            frames = conn.execute(select(func.sum(s.minutes.c.frames))).scalar_one()
            by_instance = dict(conn.execute(select(s.counters.c.instance, s.counters.c.value)
                                            .where(s.counters.c.name == "results")).all())
            alerts = conn.execute(select(func.count()).select_from(s.alerts)).scalar_one()
        assert frames == sent, "every result counted once in the aggregates"
        assert by_instance.get("one", 0) > 0 and by_instance.get("two", 0) > 0, f"both took part: {by_instance}"
        assert sum(by_instance.values()) == sent
        assert alerts == 3
        pub.close()
    finally:
        one.kill()
        two.kill()
        engine.dispose()
