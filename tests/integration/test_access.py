"""Access control: the declaration of resources/access.py, enforced by the real PostgreSQL 15 server (password
authentication, scram-sha-256 over TCP 127.0.0.1) and turned into ClickHouse statements that cover it exactly."""

import psycopg
import pytest

from resources import access
from resources.access import DOMAINS, GOVERNANCE, ROLES
from resources.settings import build_resources
from scripts.provision import apply_postgres

PROBE = "access_probe"


# ---- PostgreSQL -----------------------------------------------------------------------------------------------
def connect(s, role, password=None):
    return psycopg.connect(
        host="127.0.0.1",
        port=s.port("postgres"),
        user=role,
        dbname="nautilus",
        password=password if password is not None else s[access.password_var(role)],
        sslmode="disable",
        autocommit=True,
        connect_timeout=10,
    )


def attempt(conn, sql) -> str:
    try:
        conn.execute(sql)
        return "ok"
    except psycopg.errors.InsufficientPrivilege:
        return "denied"
    except psycopg.errors.ReadOnlySqlTransaction:
        return "read-only"


def test_each_domain_writes_its_own_schema_only_and_reads_as_declared(postgres_only):
    conns = {r: connect(postgres_only, r) for r in ROLES}
    # governance sessions default to read-only; switch that off so what is measured below is the grants
    conns[GOVERNANCE].execute("SET default_transaction_read_only = off")
    try:
        for d in DOMAINS:  # each owner creates and fills a table in its own schema (created after the grants)
            c = conns[d]
            assert attempt(c, f"DROP TABLE IF EXISTS {d}.{PROBE}") == "ok"
            assert attempt(c, f"CREATE TABLE {d}.{PROBE} (x int)") == "ok"
            assert attempt(c, f"INSERT INTO {d}.{PROBE} VALUES (1)") == "ok"
        seen = {}
        for r in ROLES:
            for d in DOMAINS:
                if r == d:
                    continue
                read = attempt(conns[r], f"SELECT * FROM {d}.{PROBE}")
                write = attempt(conns[r], f"INSERT INTO {d}.{PROBE} VALUES (2)")
                create = attempt(conns[r], f"CREATE TABLE {d}.intruder (x int)")
                assert write == "denied" and create == "denied", (r, d, write, create)
                seen[(r, d)] = "read" if read == "ok" else "none"
        assert seen == {k: v for k, v in access.matrix().items() if k[0] != k[1]}
        # the pairs named in the issue, spelled out
        assert seen[("strategy", "portfolio")] == "none" and seen[("ml", "portfolio")] == "none"
        assert seen[("risk", "portfolio")] == "read" and seen[("analytics", "risk")] == "read"
        assert attempt(conns["analytics"], f"DELETE FROM risk.{PROBE}") == "denied"
        assert attempt(conns["analytics"], f"TRUNCATE risk.{PROBE}") == "denied"
        assert attempt(conns["risk"], f"DROP TABLE portfolio.{PROBE}") == "denied"
        assert attempt(conns[GOVERNANCE], f"UPDATE ml.{PROBE} SET x = 3") == "denied"
        assert attempt(conns[GOVERNANCE], "CREATE TABLE public.g (x int)") == "denied"
        assert conns["risk"].execute(f"SELECT count(*) FROM risk.{PROBE}").fetchone()[0] == 1
    finally:
        for c in conns.values():
            c.close()


def test_wrong_or_missing_password_is_refused(postgres_only):
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        connect(postgres_only, "portfolio", password="not-the-password")
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        connect(
            postgres_only, GOVERNANCE, password=postgres_only[access.password_var("risk")]
        )  # another role's password
    with pytest.raises(psycopg.OperationalError):
        connect(postgres_only, "strategy", password="")
    # host connections use scram-sha-256; the roles' stored passwords are SCRAM verifiers
    with connect(postgres_only, GOVERNANCE) as c:
        assert c.execute("SELECT current_user").fetchone()[0] == GOVERNANCE


def test_portfolio_store_is_owned_by_portfolio_and_read_as_declared(postgres_only):
    from nautilus_assets.portfolio import store

    with connect(postgres_only, postgres_only["DAGSTER_PG_USER"], postgres_only["DAGSTER_PG_PASSWORD"]) as admin:
        # a table the admin created before access control existed passes to the domain at the next set-up
        admin.execute("CREATE TABLE IF NOT EXISTS portfolio.legacy (x int)")
    apply_postgres(postgres_only)
    portfolio = build_resources(postgres_only)["postgres"]
    assert portfolio.user == "portfolio"
    with portfolio.connect() as conn:
        assert store.ensure_schema(conn) == "native"
        conn.execute(
            "INSERT INTO portfolio.fills VALUES ('access-1', 'p', 'AAPL.XNAS', 1, 100, 0, 1, NULL, NULL) "
            "ON CONFLICT DO NOTHING"
        )
        conn.commit()
        owners = dict(
            conn.execute(
                "SELECT c.relname, pg_get_userbyid(c.relowner) FROM pg_class c "
                "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'portfolio' "
                "AND c.relkind IN ('r', 'p')"
            ).fetchall()
        )
    assert owners and set(owners.values()) == {"portfolio"}, owners
    for reader in ("risk", "analytics", GOVERNANCE):
        with connect(postgres_only, reader) as c:
            assert c.execute("SELECT count(*) FROM portfolio.fills WHERE fill_id = 'access-1'").fetchone()[0] == 1
            assert c.execute("SELECT count(*) FROM portfolio.legacy").fetchone()[0] == 0
    for outsider in ("strategy", "ml", "market_data"):
        with connect(postgres_only, outsider) as c:
            assert attempt(c, "SELECT * FROM portfolio.fills") == "denied"
    gov = build_resources(postgres_only)["postgres_governance"]
    with gov.connect() as c:
        assert c.execute("SELECT current_user, current_setting('default_transaction_read_only')").fetchone() == (
            GOVERNANCE,
            "on",
        )
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            c.execute("DELETE FROM portfolio.fills")
