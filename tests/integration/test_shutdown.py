"""Issue 13 item 9: Ctrl-C stops everything `nautilus up` started, promptly, however its output goes: here with stdout
a pipe whose reader is gone (what `| tee` leaves when the terminal's Ctrl-C kills tee first) and runs in flight."""

import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

from resources.settings import instance_environ
from tests.helpers import ROOT


def instance_processes(home: Path) -> list[str]:
    """Processes started for the instance: its home in their environment or command line (not zombies)."""
    mark, out = f"NAUTILUS_HOME={home}".encode(), []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z" and int(pid) != os.getpid() and (mark in env or str(home).encode() in cmd):
            out.append(f"{pid} {cmd[:160].decode(errors='replace')}")
    return out


def test_ctrl_c_with_stdout_a_closed_pipe_and_runs_in_flight_leaves_no_process(settings):
    instance = f"shutdown-{os.getpid()}"
    home = Path(f"/var/tmp/nautilus/{instance}")
    env = instance_environ(instance, settings.port_base + 2500, NAUTILUS_HOME=str(home))
    up = subprocess.Popen(
        [sys.executable, "-m", "scripts.cli", "up", "--history-days", "0", "--rate", "300"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        # as from a terminal, whatever this process inherited (a background job ignores SIGINT)
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    seen, t0 = [], time.monotonic()
    try:
        # ingest runs are in flight once the long-lived runs report committed batches
        while time.monotonic() - t0 < 480:
            if select.select([up.stdout], [], [], 5)[0]:
                line = up.stdout.readline().decode(errors="replace")
                seen.append(line)
                if "committed in the last" in line and " batches / " in line:
                    break
                assert line or up.poll() is None, "".join(seen)
        else:
            raise AssertionError("no batch committed in 480 s:\n" + "".join(seen[-30:]))
        assert instance_processes(home)
        up.stdout.close()  # the reader of its output is gone
        t = time.monotonic()
        os.killpg(up.pid, signal.SIGINT)  # what a terminal's Ctrl-C sends to the foreground group
        up.wait(timeout=90)
        stopped_s = time.monotonic() - t
        left = instance_processes(home)
        print(f"stopped in {stopped_s:.1f}s; left: {left}")
        assert left == [] and stopped_s < 45, left
    finally:
        if up.poll() is None:
            os.killpg(up.pid, signal.SIGKILL)
        for line in instance_processes(home):  # never leave a failed attempt's processes to the rest of the suite
            os.kill(int(line.split()[0]), signal.SIGKILL)
        subprocess.run(
            [sys.executable, "-m", "scripts.cli", "services", "remove"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            timeout=120,
        )
