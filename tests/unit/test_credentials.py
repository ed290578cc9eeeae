"""Secrets and data stay the owner's (issue 13, item 5): credentials files created 0600 atomically and refused when
planted (another owner, a wider mode, a link); the admin password never on a command line and always an escaped
literal; the instance's data directories not readable by others."""

import os
import stat

import pytest

from resources.settings import CREDENTIAL_KEYS, ensure_credentials


def test_credentials_are_created_private(tmp_path):
    home = tmp_path / "inst"
    creds = ensure_credentials(home)
    path = home / "credentials.env"
    assert set(CREDENTIAL_KEYS) <= set(creds)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and path.stat().st_uid == os.geteuid()
    assert ensure_credentials(home) == creds  # kept, not regenerated
    assert {p.name for p in home.iterdir()} == {"credentials.env", ".nautilus-instance"}  # no temporary file left


def test_a_planted_credentials_file_is_refused(tmp_path):
    planted = dict.fromkeys(CREDENTIAL_KEYS, "chosen-by-someone-else")
    path = tmp_path / "credentials.env"
    path.write_text("".join(f"{k}={v}\n" for k, v in planted.items()))
    path.chmod(0o644)
    with pytest.raises(PermissionError, match="mode 0644"):
        ensure_credentials(tmp_path)
    path.chmod(0o600)
    if os.geteuid() == 0:  # CI runs as root: plant one owned by another user
        os.chown(path, 65534, 65534)
        with pytest.raises(PermissionError, match="belongs to uid 65534"):
            ensure_credentials(tmp_path)
        os.chown(path, 0, 0)
    path.unlink()
    os.symlink(tmp_path / "elsewhere", path)
    with pytest.raises(PermissionError, match="not a regular file"):
        ensure_credentials(tmp_path)
