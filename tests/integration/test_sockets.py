"""Every listening socket of every service the platform starts is on the loopback interface (issue 13, item 7):
read from the sockets the services' processes actually hold (/proc/<pid>/fd -> /proc/net/tcp{,6}), not from the
configuration."""

import os
from pathlib import Path

from scripts import services

LOOPBACK = {"0100007F", "00000000000000000000000001000000", "0000000000000000FFFF00000100007F"}


def _listening() -> dict[int, tuple[str, int]]:
    """Socket inode -> (hex local address, port) of every TCP socket in LISTEN state."""
    out = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            f = line.split()
            if f[3] == "0A":
                addr, port = f[1].split(":")
                out[int(f[9])] = (addr, int(port, 16))
    return out


def _group_members(pgids: set[int]) -> set[int]:
    members = set()
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[2]) in pgids:  # field 5: the process group
                members.add(int(d.name))
    return members


def _socket_inodes(pid: int) -> set[int]:
    inodes = set()
    try:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(int(target[8:-1]))
    except OSError:
        pass
    return inodes


def test_every_listening_socket_is_on_loopback(settings):
    pgids = {os.getpgid(pid) for pid in services._ours(settings).values()}
    postmaster = int((settings.home / "pg" / "postmaster.pid").read_text().split()[0])
    pids = _group_members(pgids) | {postmaster}
    listening = _listening()
    held = {}
    for pid in pids:
        for inode in _socket_inodes(pid) & set(listening):
            held[listening[inode]] = pid
    ports = {port for _, port in held}
    # each service the instance manages listens somewhere (its configured port among them)
    for name, port in (
        ("postgres", settings.port("postgres")),
        ("s3", settings.port("s3")),
        ("clickhouse", settings.port("clickhouse")),
        ("redis", settings.port("redis")),
        ("pulsar", settings.port("pulsar")),
    ):
        if name in settings.managed:
            assert port in ports, (name, port, sorted(ports))
    exposed = {(addr, port): pid for (addr, port), pid in held.items() if addr not in LOOPBACK}
    assert not exposed, {
        f"{a}:{p}": open(f"/proc/{pid}/cmdline").read().replace("\0", " ")[:200] for (a, p), pid in exposed.items()
    }
