"""Access control: the declaration of resources/access.py, enforced by the real PostgreSQL 15 server (password
authentication, scram-sha-256 over TCP 127.0.0.1) and turned into ClickHouse statements that cover it exactly."""

import json
import os
import re
import subprocess
import sys
from unittest.mock import patch

import pytest

from resources import access
from resources.access import DOMAINS, GOVERNANCE, ROLES
from resources.settings import CREDENTIAL_KEYS, apply, load
from scripts import services
from scripts.provision import apply_postgres


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
    assert not any(pw in text for pw in passwords.values())  # hashes only, never the password
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
        u = [
            s
            for s in sql
            if re.match(
                rf"CREATE USER IF NOT EXISTS {r} IDENTIFIED WITH sha256_hash BY '[0-9a-f]{{64}}' "
                r"SALT '[0-9a-f]{32}'$",
                s,
            )
        ]
        assert len(u) == 1
        h, salt = re.search(r"BY '(\w+)' SALT '(\w+)'", u[0]).groups()
        assert access.sha256_hash(passwords[r], salt) == (h, salt)
        assert f"GRANT {access.clickhouse_role(r)} TO {r}" in sql
        assert f"SET DEFAULT ROLE {access.clickhouse_role(r)} TO {r}" in sql
    assert not [s for s in access.clickhouse_sql({}) if "USER" in s]  # no password, no user


def test_clickhouse_statements_parse_in_chdb():
    """chDB has no user directory that accepts CREATE ROLE/USER (it answers ACCESS_DENIED), but its parser is the
    server's: every statement must parse (EXPLAIN AST), in a subprocess (chDB allows one data path per process)."""
    sql = access.clickhouse_sql(dict.fromkeys(ROLES, "x"))
    code = (
        "import json, sys, chdb\n"
        "out = {}\n"
        "for s in json.load(sys.stdin):\n"
        "    try: out[s] = str(chdb.query('EXPLAIN AST ' + s, 'TSV')).split()[0]\n"
        "    except Exception as e: out[s] = 'ERROR ' + str(e)\n"
        "print(json.dumps(out))\n"
    )
    p = subprocess.run([sys.executable, "-c", code], input=json.dumps(sql), capture_output=True, text=True, timeout=120)
    parsed = json.loads(p.stdout.strip().splitlines()[-1])
    bad = {s: v for s, v in parsed.items() if v.startswith("ERROR")}
    assert not bad, bad
    kinds = set(parsed.values())
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
    apply_postgres(s)  # idempotent
    yield s
    if started:
        services.stop_postgres(s)


def test_access_command_prints_verifiers_and_hashes_never_passwords(capsys, monkeypatch):
    from scripts.cli import main

    for k in CREDENTIAL_KEYS:  # as production gives them: from the environment (no services started here)
        monkeypatch.setenv(k, f"not-printed-{k.lower()}")
    monkeypatch.setenv("NAUTILUS_CH_RISK_PASSWORD", "clickhouse-risk-secret")
    s = load()
    with patch.dict(os.environ):  # the CLI exports the settings for its children: not into later tests
        main(["access", "clickhouse-sql"])
        ch = capsys.readouterr().out
        main(["access", "postgres-sql"])
        pg = capsys.readouterr().out
        main(["access", "show"])
        show = capsys.readouterr().out
    secrets = ["clickhouse-risk-secret", *(s[access.password_var(r)] for r in ROLES)]
    assert not [x for x in secrets if x in ch or x in pg]
    assert ch.count("CREATE USER IF NOT EXISTS") == len(ROLES) and ch.count("GRANT SELECT ON") == sum(
        1 for (r, p), a in access.matrix().items() if a == "read" and access.DECLARATION[p][0]
    )
    assert pg.count("PASSWORD 'SCRAM-SHA-256$4096:") == len(ROLES)
    assert show.splitlines()[1].split() == ["market_data", "write", *["none"] * (len(DOMAINS) - 1)]
