"""`nautilus services stop|remove` touch only what this instance started and created (issue 13, item 8): a recorded
pid that now belongs to another process is not signalled, and `remove` deletes only an instance directory the
platform created (its marker), never a directory NAUTILUS_HOME happened to point at."""

import dataclasses
import json
import subprocess
import time

import pytest

from resources.settings import INSTANCE_MARKER, make_home
from scripts import services


def _instance(settings, home, name):
    return dataclasses.replace(settings, home=home, instance=name, managed=frozenset())


def test_remove_deletes_only_a_directory_the_platform_created(settings, tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    with pytest.raises(RuntimeError, match="did not create it"):
        services.remove(_instance(settings, mine, "mine"))
    assert (mine / "thesis.tex").read_text() == "years of work"
    make_home(mine, "mine")  # an existing directory stays unmarked
    assert not (mine / INSTANCE_MARKER).exists()
    with pytest.raises(RuntimeError):
        services.remove(_instance(settings, mine, "mine"))

    made = tmp_path / "made"
    make_home(made, "made")
    with pytest.raises(RuntimeError):  # the marker names another instance
        services.remove(_instance(settings, made, "other"))
    services.remove(_instance(settings, made, "made"))
    assert not made.exists()


def test_stop_signals_only_the_processes_this_instance_started(settings, tmp_path):
    home = tmp_path / "inst"
    make_home(home, "inst")
    s = _instance(settings, home, "inst")
    stranger = subprocess.Popen(["sleep", "60"], start_new_session=True)  # e.g. a pid reused by someone else
    try:
        start = services.process_start(stranger.pid)
        for entry in ({"pid": stranger.pid, "start": start + 1}, stranger.pid):  # other start time; legacy entry
            (home / "services.json").write_text(json.dumps({"pulsar": entry}))
            services.stop(s)
            time.sleep(0.2)
            assert stranger.poll() is None, entry
        (home / "services.json").write_text(json.dumps({"pulsar": {"pid": stranger.pid, "start": start}}))
        services.stop(s)  # the very process recorded: stopped
        assert stranger.wait(timeout=15) is not None
    finally:
        stranger.kill()
