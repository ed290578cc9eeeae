"""Who may read which product: the one declaration, and the PostgreSQL and ClickHouse access control made from it.

Every domain (and the reader-only strategy engine) is a login role that owns its PostgreSQL schema and its
ClickHouse database: only the owner writes there. The declared readers of a product get read-only grants
(USAGE + SELECT, and default privileges so tables created later are covered); governance reads everything and
writes nothing; nobody else sees a product. `nautilus setup` (scripts/provision.py) applies the PostgreSQL side
(idempotently, as the admin role DAGSTER_PG_USER, which becomes a member of every domain role); `nautilus access
clickhouse-sql` prints the ClickHouse side for production servers (chDB has no users).

Passwords come only from the environment: NAUTILUS_PG_<ROLE>_PASSWORD (generated into
NAUTILUS_HOME/credentials.env for the embedded set-up by resources/settings.py) and, for ClickHouse users,
NAUTILUS_CH_<ROLE>_PASSWORD (default: the PostgreSQL one); the product APIs take each role's bearer token,
NAUTILUS_API_<ROLE>_TOKEN (generated likewise). None is ever printed: PostgreSQL gets a SCRAM-SHA-256
verifier, ClickHouse a salted SHA-256 hash.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
from collections.abc import Mapping

EVERY_ENGINE = "every engine"
EVERY_ANALYTICAL_ENGINE = "every analytical engine"

# The declaration (source architecture): product -> (ClickHouse database it lives in, who may read it).
# The PostgreSQL schema and the login role are named after the domain. Owners write their own product only.
DECLARATION: dict[str, tuple[str | None, str | tuple[str, ...]]] = {
    #  product          ClickHouse db      may be read by
    "market_data": ("market_data", EVERY_ENGINE),
    "microstructure": ("microstructure", EVERY_ENGINE),
    "analytics": ("analytics", ("ml", "strategy")),
    "portfolio": (None, ("risk", "analytics")),  # PostgreSQL portfolio.* (the store)
    "risk": ("risk", ("portfolio", "analytics")),
    "ml": ("ml", EVERY_ANALYTICAL_ENGINE),
    "strategy": (None, ()),  # reader-only engine: its own state only
}
ANALYTICAL_ENGINES = ("analytics", "microstructure", "portfolio", "risk", "ml")
ENGINES = (*ANALYTICAL_ENGINES, "strategy")  # market data is the feed, not an engine: it reads no product
GOVERNANCE = "governance"  # reads every product, writes none (the lineage audit connects as it)
DOMAINS = tuple(DECLARATION)
ROLES = (*DOMAINS, GOVERNANCE)
# ClickHouse privileges of a database's owner (enough for the DDL and writes the assets do; no DROP DATABASE)
CLICKHOUSE_OWNER_PRIVILEGES = (
    "SELECT, INSERT, ALTER, CREATE DATABASE, CREATE TABLE, CREATE VIEW, DROP TABLE, DROP VIEW, TRUNCATE, OPTIMIZE, SHOW"
)

_IDENT = re.compile(r"^[a-z_][a-z0-9_]*$")


def readers(product: str) -> frozenset[str]:
    """The declared readers of a product, expanded (the owner and governance are not listed)."""
    who = DECLARATION[product][1]
    if who == EVERY_ENGINE:
        who = ENGINES
    elif who == EVERY_ANALYTICAL_ENGINE:
        who = ANALYTICAL_ENGINES
    return frozenset(who) - {product}


def access(role: str, product: str) -> str:
    """'write' (owner), 'read' (declared reader or governance) or 'none'."""
    if role == product:
        return "write"
    return "read" if role == GOVERNANCE or role in readers(product) else "none"


def matrix() -> dict[tuple[str, str], str]:
    return {(r, p): access(r, p) for r in ROLES for p in DOMAINS}


def password_var(role: str, system: str = "PG") -> str:
    return f"NAUTILUS_{system}_{role.upper()}_PASSWORD"


def password_vars() -> tuple[str, ...]:
    return tuple(password_var(r) for r in ROLES)


def token_var(role: str) -> str:
    """The role's bearer token for the product APIs (nautilus_assets/api)."""
    return f"NAUTILUS_API_{role.upper()}_TOKEN"


def token_vars() -> tuple[str, ...]:
    return tuple(token_var(r) for r in ROLES)


def role_of_token(env: Mapping[str, str], token: str | None) -> str | None:
    """The role a bearer token belongs to (compared in constant time), or None."""
    found = None
    for r in ROLES:
        expected = env.get(token_var(r))
        if token and expected and hmac.compare_digest(token.encode(), expected.encode()):
            found = r
    return found


def _check(*names: str) -> None:
    for n in names:
        if not _IDENT.match(n):
            raise ValueError(f"not a plain identifier: {n!r}")


def _literal(s: str) -> str:
    return "'" + s.replace("\\", "\\\\").replace("'", "''") + "'"


# ---- PostgreSQL ---------------------------------------------------------------------------------------------
def scram_sha256(password: str, salt: bytes | None = None, iterations: int = 4096) -> str:
    """The SCRAM-SHA-256 verifier PostgreSQL stores (RFC 5802/7677), so the password itself never leaves here."""
    salt = salt or os.urandom(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", "sha256").digest()
    server_key = hmac.new(salted, b"Server Key", "sha256").digest()
    b64 = lambda b: base64.b64encode(b).decode()  # noqa: E731
    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(hashlib.sha256(client_key).digest())}:{b64(server_key)}"


def postgres_sql(admin: str, passwords: Mapping[str, str] | None = None) -> list[str]:
    """DDL that makes a PostgreSQL database match the declaration, idempotently; run by `admin` (CREATEROLE,
    owner of the database). Roles missing from `passwords` keep the password they have."""
    _check(admin, *ROLES)
    passwords = passwords or {}
    sql = []
    for r in ROLES:
        sql.append(
            f"DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{r}') THEN "
            f"CREATE ROLE {r} LOGIN; END IF; END $$"
        )
        pw = f" PASSWORD {_literal(scram_sha256(passwords[r]))}" if passwords.get(r) else ""
        sql.append(f"ALTER ROLE {r} WITH LOGIN NOCREATEDB NOCREATEROLE{pw}")
        sql.append(f"GRANT {r} TO {admin}")  # the admin creates schemas for the roles and sets their defaults
    sql.append(f"ALTER ROLE {GOVERNANCE} SET default_transaction_read_only = on")
    for d in DOMAINS:
        sql += [
            f"CREATE SCHEMA IF NOT EXISTS {d} AUTHORIZATION {d}",
            f"ALTER SCHEMA {d} OWNER TO {d}",
            f"REVOKE ALL ON SCHEMA {d} FROM PUBLIC",
            # objects created before access control (or by the admin) pass to the owning domain
            f"""DO $$DECLARE t record; BEGIN
  FOR t IN SELECT c.oid::regclass AS rel, c.relkind FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
           WHERE n.nspname = '{d}' AND c.relkind IN ('r', 'p', 'v', 'm', 'f') AND c.relowner <> '{d}'::regrole LOOP
    EXECUTE format('ALTER %s %s OWNER TO {d}', CASE t.relkind WHEN 'v' THEN 'VIEW' WHEN 'm' THEN 'MATERIALIZED VIEW'
                   WHEN 'f' THEN 'FOREIGN TABLE' ELSE 'TABLE' END, t.rel);
  END LOOP; END $$""",
        ]
        for r in ROLES:
            if r == d:
                continue
            sql += [
                f"REVOKE ALL ON ALL TABLES IN SCHEMA {d} FROM {r}",
                f"REVOKE ALL ON ALL SEQUENCES IN SCHEMA {d} FROM {r}",
                f"ALTER DEFAULT PRIVILEGES FOR ROLE {d} IN SCHEMA {d} REVOKE ALL ON TABLES FROM {r}",
            ]
            if access(r, d) == "read":
                sql += [
                    f"GRANT USAGE ON SCHEMA {d} TO {r}",
                    f"GRANT SELECT ON ALL TABLES IN SCHEMA {d} TO {r}",
                    f"ALTER DEFAULT PRIVILEGES FOR ROLE {d} IN SCHEMA {d} GRANT SELECT ON TABLES TO {r}",
                ]
            else:
                sql.append(f"REVOKE ALL ON SCHEMA {d} FROM {r}")
    return sql


def role_passwords(env: Mapping[str, str], system: str = "PG") -> dict[str, str]:
    """Each role's password from the environment (ClickHouse falls back to the PostgreSQL one)."""
    out = {}
    for r in ROLES:
        pw = env.get(password_var(r, system)) or (env.get(password_var(r)) if system != "PG" else None)
        if pw:
            out[r] = pw
    return out


# ---- ClickHouse ---------------------------------------------------------------------------------------------
def clickhouse_role(role: str) -> str:
    return f"nautilus_{role}"


def sha256_hash(password: str, salt: str | None = None) -> tuple[str, str]:
    """ClickHouse's sha256_password storage: hex SHA-256 of password + salt (the server checks
    encodeSHA256(password.append(salt)), Access/AuthenticationData.cpp)."""
    salt = salt or os.urandom(16).hex()
    return hashlib.sha256((password + salt).encode()).hexdigest(), salt


def clickhouse_sql(passwords: Mapping[str, str] | None = None) -> list[str]:
    """CREATE ROLE / CREATE USER ... IDENTIFIED WITH sha256_hash (the sha256_password method, given as its salted
    hash) / GRANT statements that make a ClickHouse server match the declaration. Re-running converges: each
    role's grants are revoked and granted again; users given a password get it (re)set. Users without a
    password in `passwords` are not created (roles and grants only)."""
    _check(*ROLES)
    passwords = passwords or {}
    sql = []
    for r in ROLES:
        role = clickhouse_role(r)
        sql += [f"CREATE ROLE IF NOT EXISTS {role}", f"REVOKE ALL ON *.* FROM {role}"]
    for d in DOMAINS:
        db = DECLARATION[d][0]
        if db is None:
            continue
        _check(db)
        sql.append(f"GRANT {CLICKHOUSE_OWNER_PRIVILEGES} ON {db}.* TO {clickhouse_role(d)}")
        for r in ROLES:
            if access(r, d) == "read":
                sql.append(f"GRANT SELECT ON {db}.* TO {clickhouse_role(r)}")
    for r in ROLES:
        if not passwords.get(r):
            continue
        h, salt = sha256_hash(passwords[r])
        ident = f"IDENTIFIED WITH sha256_hash BY {_literal(h)} SALT {_literal(salt)}"
        sql += [
            f"CREATE USER IF NOT EXISTS {r} {ident}",
            f"ALTER USER {r} {ident}",
            f"GRANT {clickhouse_role(r)} TO {r}",
            f"SET DEFAULT ROLE {clickhouse_role(r)} TO {r}",
        ]
    return sql
