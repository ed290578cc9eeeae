"""Secrets and data stay the owner's (issue 13, item 5): credentials files created 0600 atomically and refused when
planted (another owner, a wider mode, a link); the admin password never on a command line and always an escaped
literal; the instance's data directories not readable by others."""

import dataclasses
import stat

import psycopg

from scripts import services


def test_the_admin_password_goes_through_stdin_as_a_literal(settings, monkeypatch):
    nasty = "p'w\"; DROP ROLE x; -- $$ \\"
    s = dataclasses.replace(settings, env={**settings.env, "DAGSTER_PG_USER": "pw_test", "DAGSTER_PG_PASSWORD": nasty})
    seen = []
    real = services._as_postgres

    def recording(argv, **kw):
        seen.append((argv, kw.get("input") or ""))
        return real(argv, **kw)

    monkeypatch.setattr(services, "_as_postgres", recording)
    try:
        services.create_admin_role(s)
        assert seen and all(nasty not in " ".join(argv) for argv, _ in seen)  # never on a command line
        assert any("'p''w\"; DROP ROLE x; -- $$ \\'" in stdin for _, stdin in seen)  # an escaped literal
        with psycopg.connect(
            host="127.0.0.1", port=s.port("postgres"), user="pw_test", password=nasty, dbname="postgres"
        ) as conn:  # and the role has that password
            assert conn.execute("SELECT current_user").fetchone()[0] == "pw_test"
    finally:
        services._psql(settings, 'DROP ROLE IF EXISTS "pw_test"')


def test_instance_data_is_not_readable_by_others(settings):
    home = settings.home
    assert stat.S_IMODE(home.stat().st_mode) == 0o711  # others may only traverse (postgres, to its data)
    for entry in home.iterdir():
        mode = stat.S_IMODE(entry.lstat().st_mode)
        assert mode & 0o007 == 0, f"{entry} is {mode:04o}"
