"""Start, report and stop the platform's own services: PostgreSQL 15, SeaweedFS (S3), Apache Pulsar
(standalone, scripts/pulsar_broker.py; or pulsar-lite with NAUTILUS_PULSAR_BROKER=lite), and ClickHouse
(embedded chDB behind scripts/clickhouse_server.py).

Each service runs in its own process group on 127.0.0.1 with data under NAUTILUS_HOME and ports
from NAUTILUS_PORT_BASE, so several instances (the run command, the tests) live side by side.
Backends pointed at production servers by environment variables are not started.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from resources.settings import (
    INSTANCE_MARKER,
    Settings,
    build_resources,
    ensure_credentials,
    is_instance_home,
    make_home,
)

from .dagster_daemon import argv as dagster_daemon_argv

ROOT = Path(__file__).resolve().parent.parent

PG_BIN = Path("/usr/lib/postgresql/15/bin")
VENV_BIN = Path(sys.executable).parent


def emit(line: str) -> None:
    """Print a line, never raising: when stdout is gone (the reader of a pipe died: `| tee` on Ctrl-C), output goes
    to /dev/null from then on, and whatever was printing (a shutdown) carries on."""
    try:
        print(line, flush=True)
    except (OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)


def log(msg: str) -> None:
    emit(f"[services] {msg}")


SESSION_VAR = "NAUTILUS_UP_SESSION"  # in the environment of what `nautilus up` spawns, and so of their children


def session_processes(token: str) -> list[int]:
    """Live processes whose environment carries SESSION_VAR=token (/proc: the environment they started with), but
    this one: what a `nautilus up` started, however deep (run workers under code servers under the daemon) and in
    whatever process group."""
    mark, out = f"{SESSION_VAR}={token}".encode(), []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                if mark in f.read().split(b"\0") and _running(int(entry)):
                    out.append(int(entry))
        except OSError:
            continue
    return out


def terminate(pids: list[int], timeout: float) -> list[int]:
    """SIGTERM the processes, SIGKILL those still alive after `timeout`; returns those that never went."""
    return list(_escalate({p: p for p in pids}, os.kill, lambda p: os.waitpid(p, os.WNOHANG), _running, timeout))


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.settimeout(0.3)
        return s.connect_ex((host, port)) == 0


def wait_port(port: int, what: str, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while not port_open(port):
        if time.time() > deadline:
            raise RuntimeError(f"{what} did not open 127.0.0.1:{port} within {timeout:.0f}s")
        time.sleep(0.2)


def _state_file(s: Settings) -> Path:
    return s.home / "services.json"


def _read_state(s: Settings) -> dict:
    f = _state_file(s)
    return json.loads(f.read_text()) if f.exists() else {}


def _write_state(s: Settings, state: dict) -> None:
    _state_file(s).write_text(json.dumps(state, indent=1))


def _spawn(s: Settings, name: str, argv: list[str], env: dict | None = None) -> int:
    logf = open(s.home / f"{name}.log", "ab")
    p = subprocess.Popen(
        argv,
        stdout=logf,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        env={**os.environ, **s.env, **(env or {})},
        cwd=s.home,
    )
    state = _read_state(s)
    state[name] = {"pid": p.pid, "start": process_start(p.pid)}  # the start time tells a reused pid apart
    _write_state(s, state)
    return p.pid


def spawn(s: Settings, name: str, argv: list[str], env: dict | None = None) -> subprocess.Popen:
    """A platform process (not a backend): its own process group, run from the project root with the instance's
    environment, its output appended to <home>/<name>.log; the caller stops it (`kill_groups`)."""
    logf = open(s.home / f"{name}.log", "ab")
    return subprocess.Popen(
        argv,
        cwd=ROOT,
        stdout=logf,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        env={**os.environ, **s.env, **(env or {})},
    )


def dagster_daemon(s: Settings, name: str = "dagster-daemon", env: dict | None = None) -> subprocess.Popen:
    """`dagster-daemon run` over workspace.yaml (through scripts/dagster_daemon.py: its code-server reload)."""
    return spawn(s, name, dagster_daemon_argv("run", "-w", "workspace.yaml"), env)


def dagster_webserver(s: Settings, name: str = "dagster-webserver", env: dict | None = None) -> subprocess.Popen:
    """The Dagster UI over workspace.yaml on the instance's webserver port (wait for it with `wait_port`)."""
    return spawn(
        s,
        name,
        [
            str(Path(sys.executable).parent / "dagster-webserver"),
            "-w",
            "workspace.yaml",
            "-h",
            "127.0.0.1",
            "-p",
            str(s.port("webserver")),
        ],
        env,
    )


def process_start(pid: int) -> int | None:
    """The process's start time (clock ticks after boot, /proc/<pid>/stat field 22); None if it is gone."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def _running(pid: int) -> bool:
    """Alive and not a zombie (a zombie has exited; only its parent's wait is missing)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return False


def _ours(s: Settings) -> dict[str, int]:
    """The recorded services whose pid is still the process this instance started (same start time; an entry of
    an older state file without one: a process whose working directory is the instance's). Others are logged and
    left alone: a recycled pid belongs to someone else."""
    out = {}
    for name, entry in _read_state(s).items():
        pid, start = (entry["pid"], entry.get("start")) if isinstance(entry, dict) else (entry, None)
        if start is not None:
            same = process_start(pid) == start
        else:
            try:
                same = Path(os.readlink(f"/proc/{pid}/cwd")) == s.home
            except OSError:
                same = False
        if same:
            out[name] = pid
        elif process_start(pid) is not None:
            log(f"not signalling {name}: pid {pid} is no longer the process this instance started")
    return out


# ---- PostgreSQL -------------------------------------------------------------------------------------------
def _as_postgres(argv: list[str], **kw) -> subprocess.CompletedProcess:
    if os.geteuid() == 0:
        argv = ["runuser", "-u", "postgres", "--", *argv]
    return subprocess.run(argv, check=True, capture_output=True, text=True, **kw)


def ensure_postgres_installed() -> None:
    if (PG_BIN / "initdb").exists():
        return
    if os.geteuid() != 0:
        raise RuntimeError(f"PostgreSQL 15 is not installed ({PG_BIN}); install postgresql-15")
    log("installing postgresql-15 with apt-get ...")
    subprocess.run(["apt-get", "update", "-qq"], check=True)
    subprocess.run(
        ["apt-get", "install", "-y", "-qq", "postgresql-15"],
        check=True,
        env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
    )


def start_postgres(s: Settings) -> None:
    ensure_postgres_installed()
    data = s.home / "pg"
    port = s.port("postgres")
    if not (data / "PG_VERSION").exists():
        log(f"initdb {data}")
        data.mkdir(parents=True, exist_ok=True)
        pwfile = s.home / "pg.pw"
        pwfile.unlink(missing_ok=True)  # never a file someone else left there: a new one, 0600
        fd = os.open(pwfile, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(s["DAGSTER_PG_PASSWORD"] + "\n")
        if os.geteuid() == 0:
            uid = pwd.getpwnam("postgres")
            for p in (data, pwfile):
                os.chown(p, uid.pw_uid, uid.pw_gid)
        data.chmod(0o700)
        _as_postgres(
            [
                str(PG_BIN / "initdb"),
                "-D",
                str(data),
                "-U",
                "postgres",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                f"--pwfile={pwfile}",
                "-E",
                "UTF8",
                "--locale=C.UTF-8",
            ]
        )
        pwfile.unlink()
    if not port_open(port):
        _as_postgres(
            [
                str(PG_BIN / "pg_ctl"),
                "-D",
                str(data),
                "-w",
                "-l",
                str(data / "server.log"),
                "start",
                "-o",
                f"-c listen_addresses=127.0.0.1 -p {port} -k {data} -c max_connections=200",
            ]
        )
    wait_port(port, "postgres")
    create_admin_role(s)


def create_admin_role(s: Settings) -> None:
    """The platform's PostgreSQL login role and its databases. The password goes to psql on its standard input,
    as an escaped literal (never on a command line, where /proc/*/cmdline shows it)."""
    user = s["DAGSTER_PG_USER"]
    if _psql(s, f"SELECT 1 FROM pg_roles WHERE rolname = {sql_literal(user)}").strip() != "1":
        _psql(
            s,
            f"CREATE ROLE {sql_ident(user)} LOGIN CREATEDB CREATEROLE PASSWORD {sql_literal(s['DAGSTER_PG_PASSWORD'])}",
        )
    for db in (s["DAGSTER_PG_DB"], "nautilus"):
        if _psql(s, f"SELECT 1 FROM pg_database WHERE datname = {sql_literal(db)}").strip() != "1":
            _psql(s, f"CREATE DATABASE {sql_ident(db)} OWNER {sql_ident(user)}")


def sql_literal(v: str) -> str:
    """A PostgreSQL string literal (standard_conforming_strings: quotes doubled; no NUL)."""
    if "\0" in v:
        raise ValueError("a NUL character cannot be in a PostgreSQL string")
    return "'" + v.replace("'", "''") + "'"


def sql_ident(v: str) -> str:
    return '"' + v.replace('"', '""') + '"'


def _psql(s: Settings, sql: str) -> str:
    return _as_postgres(
        [
            "psql",
            "-h",
            str(s.home / "pg"),
            "-p",
            str(s.port("postgres")),
            "-U",
            "postgres",
            "-d",
            "postgres",
            "-tAq",
            "-v",
            "ON_ERROR_STOP=1",
            "-f",
            "-",
        ],
        input=sql,
    ).stdout


def stop_postgres(s: Settings) -> None:
    data = s.home / "pg"
    if (data / "postmaster.pid").exists():
        # PostgreSQL's backends start their own sessions: stop it through pg_ctl, not by process group.
        _as_postgres([str(PG_BIN / "pg_ctl"), "-D", str(data), "-w", "-m", "fast", "stop"])


# ---- SeaweedFS (S3) ---------------------------------------------------------------------------------------
def start_s3(s: Settings) -> None:
    port = s.port("s3")
    if port_open(port):
        return
    d = s.home / "s3"
    (d / "data").mkdir(parents=True, exist_ok=True)
    (d / "logs").mkdir(exist_ok=True)
    argv = [
        str(VENV_BIN / "weed"),
        f"-logdir={d / 'logs'}",
        "mini",
        f"-dir={d / 'data'}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        "-master.telemetry=false",
        "-admin.ui=false",
        "-webdav=false",
        f"-s3.port={port}",
        f"-s3.port.grpc={port + 10000}",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        f"-master.port={s.port('weed_master')}",
        f"-volume.port={s.port('weed_volume')}",
        f"-filer.port={s.port('weed_filer')}",
        f"-admin.port={s.port('weed_admin')}",
        f"-metricsPort={s.port('weed_metrics')}",
        f"-debug.port={s.port('weed_debug')}",
        f"-filer.localSocket={d / 'filer.sock'}",
        f"-s3.localSocket={d / 's3.sock'}",
    ]
    _spawn(
        s,
        "s3",
        argv,
        env={
            "AWS_ACCESS_KEY_ID": s["AWS_ACCESS_KEY_ID"],
            "AWS_SECRET_ACCESS_KEY": s["AWS_SECRET_ACCESS_KEY"],
            "TMPDIR": str(d),
        },
    )
    wait_port(port, "SeaweedFS S3")
    _wait_s3_ready(s)


def _wait_s3_ready(s: Settings, timeout: float = 60) -> None:
    lake = build_resources(s)["lake"]
    deadline = time.time() + timeout
    while True:
        try:
            lake.ensure_buckets(s["NAUTILUS_LOGS_BUCKET"])
            return
        except Exception as e:  # the S3 gateway answers before the filer is ready
            if time.time() > deadline:
                raise RuntimeError(f"S3 not ready: {e}") from e
            time.sleep(0.5)


# ---- Pulsar: Apache Pulsar standalone (scripts/pulsar_broker.py) or pulsar-lite -------------------------
def start_pulsar(s: Settings) -> None:
    (start_apache_pulsar if s["NAUTILUS_PULSAR_BROKER"] == "apache" else start_pulsar_lite)(s)


def start_apache_pulsar(s: Settings) -> None:
    from . import pulsar_broker

    if pulsar_broker.healthy(s):
        return
    pulsar_broker.fetch()
    if port_open(s.port("pulsar")) or port_open(s.port("pulsar_web")):  # starting, or something else holds it
        pulsar_broker.wait_healthy(s)
        return
    pid = _spawn(s, "pulsar", pulsar_broker.argv(s))
    pulsar_broker.wait_healthy(s, pid)


def start_pulsar_lite(s: Settings) -> None:
    port = s.port("pulsar")
    if port_open(port):
        return
    d = s.home / "pulsar"
    d.mkdir(parents=True, exist_ok=True)
    cfg = d / "pulsar-lite.toml"
    cfg.write_text(f'[metrics]\naddr = "127.0.0.1:{s.port("pulsar_metrics")}"\n')
    import pulsar_lite

    binary = Path(pulsar_lite.__file__).parent / "bin" / "pulsar-lite"
    _spawn(
        s,
        "pulsar",
        [
            str(binary),
            "--config",
            str(cfg),
            "--addr",
            f"127.0.0.1:{port}",
            "--db-path",
            str(d / "data"),
            "--log-level",
            "warn",
        ],
    )
    wait_port(port, "pulsar-lite")
    wait_port(s.port("pulsar_metrics"), "pulsar-lite metrics")


# ---- ClickHouse: embedded chDB behind the project's HTTP server (scripts/clickhouse_server.py) ----------------
def start_clickhouse(s: Settings) -> None:
    port = s.port("clickhouse")
    if not port_open(port):
        _spawn(
            s,
            "clickhouse",
            [
                sys.executable,
                str(Path(__file__).with_name("clickhouse_server.py")),
                "--path",
                s["NAUTILUS_CHDB_PATH"],
                "--port",
                str(port),
                "--user",
                s["CLICKHOUSE_USER"],
            ],
            env={"CLICKHOUSE_PASSWORD": s["CLICKHOUSE_PASSWORD"]},
        )
    wait_port(port, "ClickHouse (chDB) HTTP server")


# ---- Redis: the current-state cache (Debian's redis-server) ---------------------------------------------
def ensure_redis_installed() -> str:
    found = shutil.which("redis-server") or (
        "/usr/bin/redis-server" if Path("/usr/bin/redis-server").exists() else None
    )
    if found:
        return found
    if os.geteuid() != 0:
        raise RuntimeError("redis-server is not installed; install Debian's redis-server (or set NAUTILUS_REDIS_URL)")
    log("installing redis-server with apt-get ...")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    if (
        subprocess.run(["apt-get", "install", "-y", "-qq", "redis-server"], env=env, capture_output=True).returncode
        != 0
    ):  # a stale package index: refresh it once
        subprocess.run(["apt-get", "update", "-qq"], check=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", "redis-server"], check=True, env=env)
    return "/usr/bin/redis-server"


def start_redis(s: Settings) -> None:
    """127.0.0.1 only, a password, no persistence (the cache is rebuilt from the stores when empty). The password
    is in a 0600 config file, never on the command line."""
    port = s.port("redis")
    if port_open(port):
        return
    binary = ensure_redis_installed()
    d = s.home / "redis"
    d.mkdir(parents=True, exist_ok=True)
    d.chmod(0o700)
    conf = d / "redis.conf"
    fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(
            f'bind 127.0.0.1\nport {port}\nprotected-mode yes\ndir {d}\nsave ""\nappendonly no\n'
            f'daemonize no\nlogfile ""\nmaxmemory 512mb\nmaxmemory-policy noeviction\n'
            f"requirepass {s['NAUTILUS_REDIS_PASSWORD']}\n"
        )
    _spawn(s, "redis", [binary, str(conf)])
    wait_port(port, "redis-server")


# ---- TimescaleDB (PGlite build, for the portfolio store's hypertable path) -------------------------------
def start_timescaledb(s: Settings) -> int:
    """Serve PGlite + TimescaleDB on 127.0.0.1 (npm packages pinned by scripts/timescaledb/package-lock.json)."""
    port = s.port("timescaledb")
    if port_open(port):
        return port
    app = Path(__file__).resolve().parent / "timescaledb"
    if not (app / "node_modules").exists():
        log("installing the TimescaleDB PGlite build with npm ci ...")
        subprocess.run(
            ["npm", "ci", "--ignore-scripts", "--legacy-peer-deps", "--no-audit", "--no-fund"],
            cwd=app,
            check=True,
            stdout=subprocess.DEVNULL,
        )
    (s.home / "timescaledb").mkdir(parents=True, exist_ok=True)
    _spawn(s, "timescaledb", ["node", str(app / "server.mjs"), str(s.home / "timescaledb" / "data"), str(port)])
    wait_port(port, "PGlite TimescaleDB", timeout=120)
    return port


# ---- all --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Service:
    """A backend the project starts for an instance that does not point it at a production server."""

    name: str
    start: Callable[[Settings], object]  # returns once it is ready (each waits for its port or health)
    port: str  # the settings' port that tells whether it is up
    stop: Callable[[Settings], None] | None = None  # None: its process group is signalled (services.json)

    def up(self, s: Settings) -> bool:
        return port_open(s.port(self.port))


SERVICES = {
    svc.name: svc
    for svc in (
        Service("postgres", start_postgres, "postgres", stop_postgres),
        Service("s3", start_s3, "s3"),
        Service("pulsar", start_pulsar, "pulsar"),
        Service("clickhouse", start_clickhouse, "clickhouse"),
        Service("redis", start_redis, "redis"),
    )
}


def prepare(s: Settings) -> Settings:
    """The instance directory and its generated credentials (once); the settings reloaded with them."""
    # what the services write is the owner's alone (data, logs, configs); the postgres user gets only the right to
    # traverse to its data directory (x, not r: no one else lists or reads the instance)
    os.umask(0o077)
    make_home(s.home, s.instance)
    if s.home.stat().st_uid == os.geteuid():
        s.home.chmod(0o711)
    for parent in s.home.parents:
        if parent == Path("/"):
            break
        if parent.stat().st_uid == os.geteuid():
            parent.chmod(parent.stat().st_mode | 0o011)
    ensure_credentials(s.home, s.instance)
    return s.reload()


def start(s: Settings) -> Settings:
    """Start the backends this instance manages; returns the settings with the instance's credentials."""
    s = prepare(s)
    for name, svc in SERVICES.items():
        if name in s.managed:
            t = time.time()
            log(f"starting {name} ...")
            svc.start(s)
            log(f"{name} up in {time.time() - t:.1f}s")
        else:
            log(f"{name}: production server configured, not started")
    return s


def status(s: Settings) -> dict[str, str]:
    out = {
        n: (f"up on 127.0.0.1:{s.port(svc.port)}" if svc.up(s) else "down") if n in s.managed else "external"
        for n, svc in SERVICES.items()
    }
    from resources.settings import API_PORTS

    for product in API_PORTS:  # started by `nautilus up` / `nautilus api`, not by `services start`
        out[f"api {product}"] = f"up at {s.api_url(product)}" if port_open(s.api_port(product)) else "down"
    if "pulsar" in s.managed and s["NAUTILUS_PULSAR_BROKER"] == "apache" and port_open(s.port("pulsar")):
        from . import pulsar_broker

        out["pulsar"] += f", Apache Pulsar admin {pulsar_broker.admin_url(s)} " + (
            "healthy" if pulsar_broker.healthy(s) else "NOT healthy"
        )
    return out


def stop(s: Settings) -> None:
    for name, svc in SERVICES.items():
        if svc.stop and name in s.managed:
            try:
                svc.stop(s)
            except subprocess.CalledProcessError as e:
                log(f"{name} stop: {e.stderr.strip()}")
    kill_groups(_ours(s))  # the others: their process groups
    _write_state(s, {})


def kill_groups(pids: dict[str, int], timeout: float = 10) -> None:
    """SIGTERM process groups (all at once, so their shutdowns overlap), then SIGKILL whatever is left."""
    groups = {}
    for name, pid in pids.items():
        try:
            groups[name] = os.getpgid(pid)
        except ProcessLookupError:
            pass
    # reaping our own children (the group's leader) keeps them from lingering as zombies
    left = _escalate(groups, os.killpg, lambda g: os.waitpid(-g, os.WNOHANG), _group_alive, timeout)
    for name, pgid in left.items():
        log(f"{name} (group {pgid}) did not stop")


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


def _escalate(targets: dict, send, reap, alive, timeout: float) -> dict:
    """Send SIGTERM to every target at once, SIGKILL to those still alive after `timeout`; returns what is left."""
    targets = dict(targets)
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5)):
        for t in targets.values():
            try:
                send(t, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait
        while targets and time.monotonic() < deadline:
            for name, t in list(targets.items()):
                try:
                    reap(t)
                except ChildProcessError:
                    pass
                if not alive(t):
                    del targets[name]
            time.sleep(0.1)
    return targets


def remove(s: Settings) -> None:
    """Stop the services and delete the instance directory: only one the platform created (its marker file)."""
    if s.home.exists() and not is_instance_home(s.home, s.instance):
        raise RuntimeError(
            f"refusing to delete {s.home}: the platform did not create it (no {INSTANCE_MARKER} "
            f"naming instance {s.instance!r}); stop the services with `nautilus services stop` and "
            "delete what you want yourself"
        )
    stop(s)
    shutil.rmtree(s.home, ignore_errors=True)


def stop_one(s: Settings, name: str) -> None:
    """Stop one service this project started."""
    if SERVICES[name].stop:
        SERVICES[name].stop(s)
    elif pid := _ours(s).get(name):
        kill_groups({name: pid})


def restart(s: Settings, name: str, down_s: float = 0.0) -> float:
    """Stop one service and start it again after `down_s` seconds (fault-injection tests); returns seconds taken."""
    t = time.time()
    stop_one(s, name)
    time.sleep(down_s)
    SERVICES[name].start(s)
    return time.time() - t
