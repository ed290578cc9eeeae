"""Provisioning: everything an instance needs before it runs, idempotent (`nautilus setup`, and the services' start):
PostgreSQL roles and schemas, buckets, every product's tables, Pulsar topics and subscriptions, the Dagster instance's
storage schema and concurrency pools."""

from __future__ import annotations

from pathlib import Path

from resources import access
from resources.postgres import PostgresResource
from resources.settings import Settings, build_resources

ROOT = Path(__file__).resolve().parent.parent


def prepare_dagster_home(s: Settings) -> Path:
    """A per-instance DAGSTER_HOME holding the project's dagster.yaml."""
    home = Path(s["DAGSTER_HOME"])
    home.mkdir(parents=True, exist_ok=True)
    link = home / "dagster.yaml"
    if not link.exists():
        link.symlink_to(ROOT / "dagster.yaml")
    return home


def setup(s: Settings) -> None:
    """Buckets, ClickHouse tables, Pulsar tenant/namespaces/topics and subscriptions, and the Dagster instance
    schema (idempotent)."""
    from nautilus_assets.market_data.setup import ensure_clickhouse, ensure_subscriptions
    from nautilus_assets.stores import ensure_all
    from resources import topics

    r = build_resources(s)
    apply_postgres(s)  # domain schemas and login roles, read grants as declared (resources/access.py)
    r["lake"].ensure_buckets(s["NAUTILUS_LOGS_BUCKET"])
    ensure_clickhouse(r["clickhouse"])
    ensure_all(r)  # every product's tables (and the columns added since), here rather than in each materialization
    if s["PULSAR_ADMIN_URL"]:  # Apache Pulsar; pulsar-lite has no admin API and creates topics on first use
        topics.ensure(s["PULSAR_ADMIN_URL"])
    ensure_subscriptions(r["pulsar"])
    prepare_dagster_home(s)
    from dagster import DagsterInstance

    with DagsterInstance.get() as inst:  # creates/migrates the PostgreSQL schema once, before the daemons race for it
        inst.upgrade()
        from nautilus_assets.pools import apply_pool_limits

        apply_pool_limits(inst)  # one concurrency pool per backend, sized from the engine shares


def apply_postgres(settings: Settings) -> int:
    """Apply postgres_sql to the database `nautilus` as the admin role (one transaction); returns statement count."""
    s = settings
    admin = PostgresResource(
        host=s["DAGSTER_PG_HOST"],
        port=int(s["DAGSTER_PG_PORT"]),
        user=s["DAGSTER_PG_USER"],
        password=s["DAGSTER_PG_PASSWORD"],
        dbname="nautilus",
        connect_timeout_s=s.pg_connect_timeout_s,
        statement_timeout_s=s.pg_statement_timeout_s,
    )
    statements = access.postgres_sql(s["DAGSTER_PG_USER"], access.role_passwords(s.env))
    with admin.connect() as conn:
        if not conn.execute("SELECT rolcreaterole OR rolsuper FROM pg_roles WHERE rolname = current_user").fetchone()[
            0
        ]:
            raise RuntimeError(
                f"{s['DAGSTER_PG_USER']} may not create roles: give it CREATEROLE, or have a DBA apply "
                "`nautilus access postgres-sql`"
            )
        for stmt in statements:
            conn.execute(stmt)
        conn.commit()
    return len(statements)
