"""PostgreSQL: the Dagster instance storage and (later) the portfolio store."""

from __future__ import annotations

import dagster as dg
import psycopg
from pydantic import Field


class PostgresResource(dg.ConfigurableResource):
    host: str = Field("127.0.0.1", description="Server host")
    port: int = Field(5432, description="Server port")
    user: str = Field("nautilus", description="Login role")
    password: str = Field("", description="From DAGSTER_PG_PASSWORD / the domain's secret")
    dbname: str = Field("nautilus", description="Database")
    sslmode: str = Field("prefer", description="libpq sslmode (require in production)")
    prepared_statements: bool = Field(
        True, description="False for servers whose connections share one session (PGlite's socket server)"
    )
    connect_timeout_s: int = Field(
        10,
        description="Give up connecting after this long (a server that accepts but "
        "never answers would otherwise hold the caller for ever)",
    )
    statement_timeout_s: float = Field(600, description="The server cancels a statement running longer (0: never)")

    def connect(self, dbname: str | None = None, **kw) -> psycopg.Connection:
        conn = psycopg.connect(
            host=self.host,
            port=self.port,
            user=self.user,
            password=self.password,
            dbname=dbname or self.dbname,
            sslmode=self.sslmode,
            connect_timeout=self.connect_timeout_s,
            options=f"-c statement_timeout={int(self.statement_timeout_s * 1000)}",
            **kw,
        )
        if not self.prepared_statements:
            conn.prepare_threshold = None
        return conn
