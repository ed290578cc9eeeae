"""Issue 13 item 11: configuration is validated once, every problem named with its variable, before anything starts;
PostgreSQL connections give up connecting and cancel long statements."""

import socket
import threading
import time

import psycopg
import pytest
import sqlalchemy

from resources.postgres import PostgresResource


def test_postgres_statements_and_connects_time_out(res, settings):
    pg = res["postgres"]
    short = PostgresResource(**{**pg.model_dump(), "statement_timeout_s": 1.0})
    t = time.monotonic()
    with short.connect() as conn, pytest.raises(psycopg.errors.QueryCanceled):
        conn.execute("SELECT pg_sleep(5)")
    assert time.monotonic() - t < 4
    with pg.connect() as conn:
        assert conn.execute("SHOW statement_timeout").fetchone()[0] == "10min"  # the default, 600 s

    # a server that accepts the connection and never answers
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    held = []
    threading.Thread(target=lambda: held.append(silent.accept()), daemon=True).start()
    stuck = PostgresResource(**{**pg.model_dump(), "port": silent.getsockname()[1], "connect_timeout_s": 2})
    t = time.monotonic()
    with pytest.raises(psycopg.OperationalError):
        stuck.connect()
    assert time.monotonic() - t < 8
    silent.close()

    # the Dagster instance storage's connections too
    engine = sqlalchemy.create_engine(settings["DAGSTER_PG_URL"])
    with engine.connect() as conn:
        assert conn.execute(sqlalchemy.text("SHOW statement_timeout")).scalar() == "10min"
    engine.dispose()
