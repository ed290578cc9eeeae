"""Access control: the declaration of resources/access.py, enforced by the real PostgreSQL 15 server (password
authentication, scram-sha-256 over TCP 127.0.0.1) and turned into ClickHouse statements that cover it exactly."""
import json
import re
import subprocess
import sys

import psycopg
import pytest

from resources import access
from resources.access import DOMAINS, GOVERNANCE, ROLES
from resources.settings import apply, build_resources, load
from scripts import services
from scripts.provision import apply_postgres

PROBE = "access_probe"


def test_declaration_as_the_source_architecture_states_it():
    assert access.readers("risk") == {"portfolio", "analytics"}
    assert access.readers("analytics") == {"ml", "strategy"}
    assert access.readers("portfolio") == {"risk", "analytics"}
    assert access.readers("ml") == {"analytics", "microstructure", "portfolio", "risk"}
    engines = {"analytics", "microstructure", "portfolio", "risk", "ml", "strategy"}
    assert access.readers("market_data") == engines
    assert access.readers("microstructure") == engines - {"microstructure"}
    assert access.readers("strategy") == frozenset()
    m = access.matrix()
    assert all(m[(GOVERNANCE, p)] == "read" for p in DOMAINS)
    assert [p for p in DOMAINS if m[("market_data", p)] != "none"] == ["market_data"]
    assert {(r, p) for (r, p), a in m.items() if a == "write"} == {(d, d) for d in DOMAINS}


# ---- ClickHouse -----------------------------------------------------------------------------------------------
def test_clickhouse_statements_cover_the_declaration_exactly():
    passwords = {r: f"pw-{r}-secret" for r in ROLES}
    sql = access.clickhouse_sql(passwords)
    text = "\n".join(sql)
    assert not any(pw in text for pw in passwords.values())          # hashes only, never the password
    role = {access.clickhouse_role(r): r for r in ROLES}
    assert {m for s in sql for m in re.findall(r"^CREATE ROLE IF NOT EXISTS (\w+)$", s)} == set(role)
    db_of = {access.DECLARATION[d][0]: d for d in DOMAINS if access.DECLARATION[d][0]}
    reads, writes = set(), set()
    for s in sql:
        if g := re.fullmatch(r"GRANT SELECT ON (\w+)\.\* TO (\w+)", s):
            reads.add((role[g[2]], db_of[g[1]]))
        elif g := re.fullmatch(r"GRANT (SELECT, INSERT.*) ON (\w+)\.\* TO (\w+)", s):
            writes.add((role[g[3]], db_of[g[2]]))
            assert "DROP DATABASE" not in g[1] and "INSERT" in g[1]
        elif s.startswith("GRANT") and " TO " in s and " ON " in s:
            raise AssertionError(f"unexpected grant: {s}")
    expected = access.matrix()
    assert reads == {(r, p) for (r, p), a in expected.items() if a == "read" and p in db_of.values()}
    assert writes == {(r, p) for (r, p), a in expected.items() if a == "write" and p in db_of.values()}
    # one login user per role, with the sha256_password method (given as its salted hash) and its role by default
    for r in ROLES:
        u = [s for s in sql if re.match(rf"CREATE USER IF NOT EXISTS {r} IDENTIFIED WITH sha256_hash BY '[0-9a-f]{{64}}' "
                                        r"SALT '[0-9a-f]{32}'$", s)]
        assert len(u) == 1
        h, salt = re.search(r"BY '(\w+)' SALT '(\w+)'", u[0]).groups()
        assert access.sha256_hash(passwords[r], salt) == (h, salt)
        assert f"GRANT {access.clickhouse_role(r)} TO {r}" in sql
        assert f"SET DEFAULT ROLE {access.clickhouse_role(r)} TO {r}" in sql
    assert not [s for s in access.clickhouse_sql({}) if "USER" in s]   # no password, no user


def test_clickhouse_statements_parse_in_chdb():
    """chDB has no user directory that accepts CREATE ROLE/USER (it answers ACCESS_DENIED), but its parser is the
    server's: every statement must parse (EXPLAIN AST), in a subprocess (chDB allows one data path per process)."""
    sql = access.clickhouse_sql({r: "x" for r in ROLES})
    code = ("import json, sys, chdb\n"
            "out = {}\n"
            "for s in json.load(sys.stdin):\n"
            "    try: out[s] = str(chdb.query('EXPLAIN AST ' + s, 'TSV')).split()[0]\n"
            "    except Exception as e: out[s] = 'ERROR ' + str(e)\n"
            "print(json.dumps(out))\n")
    p = subprocess.run([sys.executable, "-c", code], input=json.dumps(sql), capture_output=True, text=True, timeout=120)
    parsed = json.loads(p.stdout.strip().splitlines()[-1])
    bad = {s: v for s, v in parsed.items() if v.startswith("ERROR")}
    assert not bad, bad
    kinds = {v for v in parsed.values()}
    assert kinds >= {"CreateRoleQuery", "CreateUserQuery", "GrantQuery"}, kinds


# ---- PostgreSQL -----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pg():
    """The test instance's PostgreSQL 15 with the access control applied (only PostgreSQL is needed here)."""
    s = apply(services.prepare(load()))
    started = not services.port_open(s.port("postgres"))
    if started:
        s.home.mkdir(parents=True, exist_ok=True)
        services.start_postgres(s)
    apply_postgres(s)
    apply_postgres(s)                       # idempotent
    yield s
    if started:
        services.stop_postgres(s)


def connect(s, role, password=None):
    return psycopg.connect(host="127.0.0.1", port=s.port("postgres"), user=role, dbname="nautilus",
                           password=password if password is not None else s[access.password_var(role)],
                           sslmode="disable", autocommit=True, connect_timeout=10)


def attempt(conn, sql) -> str:
    try:
        conn.execute(sql)
        return "ok"
    except psycopg.errors.InsufficientPrivilege:
        return "denied"
    except psycopg.errors.ReadOnlySqlTransaction:
        return "read-only"


def test_each_domain_writes_its_own_schema_only_and_reads_as_declared(pg):
    conns = {r: connect(pg, r) for r in ROLES}
    # governance sessions default to read-only; switch that off so what is measured below is the grants
    conns[GOVERNANCE].execute("SET default_transaction_read_only = off")
    try:
        for d in DOMAINS:   # each owner creates and fills a table in its own schema (created after the grants)
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


def test_wrong_or_missing_password_is_refused(pg):
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        connect(pg, "portfolio", password="not-the-password")
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        connect(pg, GOVERNANCE, password=pg[access.password_var("risk")])   # another role's password
    with pytest.raises(psycopg.OperationalError):
        connect(pg, "strategy", password="")
    # host connections use scram-sha-256; the roles' stored passwords are SCRAM verifiers
    with connect(pg, GOVERNANCE) as c:
        assert c.execute("SELECT current_user").fetchone()[0] == GOVERNANCE


def test_portfolio_store_is_owned_by_portfolio_and_read_as_declared(pg):
    from nautilus_assets.portfolio import store
    with connect(pg, pg["DAGSTER_PG_USER"], pg["DAGSTER_PG_PASSWORD"]) as admin:
        # a table the admin created before access control existed passes to the domain at the next set-up
        admin.execute("CREATE TABLE IF NOT EXISTS portfolio.legacy (x int)")
    apply_postgres(pg)
    portfolio = build_resources(pg)["postgres"]
    assert portfolio.user == "portfolio"
    with portfolio.connect() as conn:
        assert store.ensure_schema(conn) == "native"
        conn.execute("INSERT INTO portfolio.fills VALUES ('access-1', 'p', 'AAPL.XNAS', 1, 100, 0, 1, NULL, NULL) "
                     "ON CONFLICT DO NOTHING")
        conn.commit()
        owners = dict(conn.execute("SELECT c.relname, pg_get_userbyid(c.relowner) FROM pg_class c "
                                   "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'portfolio' "
                                   "AND c.relkind IN ('r', 'p')").fetchall())
    assert owners and set(owners.values()) == {"portfolio"}, owners
    for reader in ("risk", "analytics", GOVERNANCE):
        with connect(pg, reader) as c:
            assert c.execute("SELECT count(*) FROM portfolio.fills WHERE fill_id = 'access-1'").fetchone()[0] == 1
            assert c.execute("SELECT count(*) FROM portfolio.legacy").fetchone()[0] == 0
    for outsider in ("strategy", "ml", "market_data"):
        with connect(pg, outsider) as c:
            assert attempt(c, "SELECT * FROM portfolio.fills") == "denied"
    gov = build_resources(pg)["postgres_governance"]
    with gov.connect() as c:
        assert c.execute("SELECT current_user, current_setting('default_transaction_read_only')").fetchone() == (
            GOVERNANCE, "on")
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            c.execute("DELETE FROM portfolio.fills")


def test_access_command_prints_verifiers_and_hashes_never_passwords(capsys, monkeypatch):
    from scripts.cli import main
    monkeypatch.setenv("NAUTILUS_CH_RISK_PASSWORD", "clickhouse-risk-secret")
    s = load()
    main(["access", "clickhouse-sql"])
    ch = capsys.readouterr().out
    main(["access", "postgres-sql"])
    pg = capsys.readouterr().out
    main(["access", "show"])
    show = capsys.readouterr().out
    secrets = ["clickhouse-risk-secret", *(s[access.password_var(r)] for r in ROLES)]
    assert not [x for x in secrets if x in ch or x in pg]
    assert ch.count("CREATE USER IF NOT EXISTS") == len(ROLES) and ch.count("GRANT SELECT ON") == sum(
        1 for (r, p), a in access.matrix().items() if a == "read" and access.DECLARATION[p][0])
    assert pg.count("PASSWORD 'SCRAM-SHA-256$4096:") == len(ROLES)
    assert show.splitlines()[1].split() == ["market_data", "write", *["none"] * (len(DOMAINS) - 1)]
