"""The one place that maps environment variables to embedded or production backends.

Every setting has a default that makes the embedded set-up work with no configuration:
services on 127.0.0.1 at ports derived from NAUTILUS_PORT_BASE, data under NAUTILUS_HOME,
local credentials generated on first start into NAUTILUS_HOME/credentials.env (mode 0600).
Setting CLICKHOUSE_HOST, S3_ENDPOINT_URL, PULSAR_SERVICE_URL or DAGSTER_PG_HOST points that backend at
a production server instead; `managed` then no longer includes it and the project starts nothing for it.
Locally, ClickHouse is embedded chDB behind the project's own HTTP server (scripts/clickhouse_server.py), so
every process reaches it as it would reach a production server.
"""

from __future__ import annotations

import math
import os
import secrets
import stat
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from dotenv import dotenv_values

from . import access

# Offsets from NAUTILUS_PORT_BASE. SeaweedFS adds 10000 to some of its ports for gRPC.
PORTS = {
    "postgres": 0,
    "s3": 1,
    "weed_master": 2,
    "weed_volume": 3,
    "weed_filer": 4,
    "weed_admin": 5,
    "weed_metrics": 6,
    "weed_debug": 7,
    "pulsar": 10,
    "pulsar_metrics": 11,
    "timescaledb": 12,
    "pulsar_web": 13,
    "pulsar_bookie": 14,
    "webserver": 20,
    "clickhouse": 21,
    "redis": 22,
}
# The data products' read APIs (nautilus_assets/api): the source architecture's ports in production (no backend
# started by the project), else the port base + API_PORT_OFFSET + their index here, so instances never collide.
API_PORTS = {
    "market_analytics": 8100,
    "risk_metrics": 8200,
    "ml_predictions": 8400,
    "market_data_feed": 8800,
    "portfolio_states": 8900,
    "market_microstructure": 10000,
}
API_PORT_OFFSET = 30
# Which Pulsar broker the project starts for itself: Apache Pulsar standalone (jars from Maven Central,
# scripts/pulsar_broker.py) or pulsar-lite (a small Rust broker from PyPI, no admin API).
PULSAR_BROKERS = ("apache", "lite")
CREDENTIAL_KEYS = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "DAGSTER_PG_PASSWORD",
    "CLICKHOUSE_PASSWORD",
    "NAUTILUS_REDIS_PASSWORD",
    *access.password_vars(),  # NAUTILUS_PG_<ROLE>_PASSWORD: the domains' login roles
    *access.token_vars(),
)  # NAUTILUS_API_<ROLE>_TOKEN: the roles' bearer tokens for the APIs


def check_private(path: Path) -> None:
    """Refuse a secrets file this user does not own, or that others may read or write: one planted beforehand
    (e.g. under /var/tmp) would otherwise choose the passwords."""
    st = path.lstat()
    if not stat.S_ISREG(st.st_mode):
        raise PermissionError(f"{path}: not a regular file; remove it (the platform generates its credentials)")
    if st.st_uid != os.geteuid():
        raise PermissionError(
            f"{path} belongs to uid {st.st_uid}, not to this user ({os.geteuid()}); remove it or "
            "set NAUTILUS_HOME to a directory of your own"
        )
    if st.st_mode & 0o077:
        raise PermissionError(
            f"{path} has mode {stat.S_IMODE(st.st_mode):04o}; it must be 0600 (chmod 600 it if "
            "its contents are yours, else remove it)"
        )


def write_private(path: Path, text: str) -> None:
    """Write a secrets file atomically, created 0600: a temporary file in the same directory, then a rename."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


INSTANCE_MARKER = ".nautilus-instance"  # in an instance directory the platform created: `remove` deletes only those


def make_home(home: Path, instance: str) -> None:
    """Create the instance directory (0711: others may only traverse it) and mark it as the platform's; an existing
    directory is left as it is, unmarked, so `services remove` will not delete it."""
    home.parent.mkdir(parents=True, exist_ok=True)
    try:
        home.mkdir(mode=0o711)
    except FileExistsError:
        return
    write_private(home / INSTANCE_MARKER, instance + "\n")


def is_instance_home(home: Path, instance: str) -> bool:
    marker = home / INSTANCE_MARKER
    try:
        return marker.is_file() and not marker.is_symlink() and marker.read_text().strip() == instance
    except OSError:
        return False


def read_credentials(home: Path) -> dict[str, str]:
    """The instance's generated credentials ({} before the services' first start); refused if others could read
    or plant them."""
    path = home / "credentials.env"
    if not os.path.lexists(path):
        return {}
    check_private(path)
    return dotenv_values(path)


def ensure_credentials(home: Path, instance: str = "") -> dict[str, str]:
    """Local credentials, generated once per instance (0600, owned by this user); never committed. Called by the
    services' start-up (scripts/services.py), never by `load`."""
    creds = read_credentials(home)
    if not all(k in creds for k in CREDENTIAL_KEYS):  # add what is missing; keep what an instance already uses
        make_home(home, instance or home.name)
        creds = {
            **{k: secrets.token_urlsafe(18) for k in CREDENTIAL_KEYS},
            "AWS_ACCESS_KEY_ID": "nautilus" + secrets.token_hex(4),
            "AWS_SECRET_ACCESS_KEY": secrets.token_urlsafe(24),
            **creds,
        }
        write_private(home / "credentials.env", "".join(f"{k}={v}\n" for k, v in creds.items()))
    return creds


# Streaming (long-lived micro-batch runs): variable -> (default, meaning). Validated by `streaming()`.
STREAMING_VARS = {
    "NAUTILUS_BATCH_MAX_MESSAGES": (20_000, "a micro-batch commits at most this many messages"),
    "NAUTILUS_BATCH_MAX_WAIT_SECONDS": (0.5, "... or what arrived this long after its first message"),
    "NAUTILUS_RUN_LIFETIME_SECONDS": (600, "an ingest run commits batches back to back for this long"),
    "NAUTILUS_RUN_IDLE_SECONDS": (60, "... and ends earlier after this long without a message"),
    "NAUTILUS_HANDOVER_LEAD_SECONDS": (90, "the sensor launches the successor this long before the lifetime ends"),
    "NAUTILUS_WATCHDOG_SILENT_SECONDS": (300, "an in-flight run that logged nothing this long is failed"),
    "NAUTILUS_LATENESS_BOUND_SECONDS": (7 * 86400, "older ts_event is quarantined (historical replays are exempt)"),
    "NAUTILUS_RUN_RSS_HANDOVER_MB": (896, "a run whose resident memory passes this asks for its successor early"),
    "NAUTILUS_PRODUCT_RUN_NICE": (5, "a sensor-launched streaming-product run lowers its CPU priority by this much"),
}


@dataclass(frozen=True)
class Streaming:
    batch_max_messages: int
    batch_max_wait_s: float
    run_lifetime_s: float
    run_idle_s: float
    handover_lead_s: float
    watchdog_silent_s: float
    lateness_bound_s: float
    run_rss_handover_mb: float
    product_run_nice: float

    @property
    def run_max_runtime_s(self) -> int:
        """Past its lifetime a run keeps committing until its successor takes over, for at most 2 leads more;
        `dagster/max_runtime` fails it after that and a margin."""
        return int(self.run_lifetime_s + 2 * self.handover_lead_s + 120)

    @property
    def handover_wait_s(self) -> float:
        """How long a successor waits for its predecessor to release the subscription."""
        return 2 * self.handover_lead_s + 30


class SettingsError(ValueError):
    """A setting that cannot work, named with its variable (raised once, before anything starts)."""


def number(env, name: str, default: float) -> float:
    value = env.get(name) or default
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise SettingsError(f"{name}={value!r}: expected a number") from None
    if not math.isfinite(x):
        raise SettingsError(f"{name}={value!r}: expected a finite number")
    return x


def numbers(env, defaults: dict, problems: list[str]) -> dict[str, float]:
    """Each variable as a number; a bad one is listed in `problems` and its default stands in, so the checks of
    how the values relate still run on the rest (every problem is named at once)."""
    out = {}
    for k, d in defaults.items():
        try:
            out[k] = number(env, k, d)
        except SettingsError as e:
            problems.append(str(e))
            out[k] = float(d)
    return out


def _raise_if(problems: list[str]) -> None:
    if problems:
        raise SettingsError("\n  ".join(problems))


def streaming(env=None) -> Streaming:
    """The streaming settings from the environment (or `env`), validated: nonsense is an error, not a stall."""
    env = os.environ if env is None else env
    problems: list[str] = []
    v = numbers(env, {k: d for k, (d, _) in STREAMING_VARS.items()}, problems)
    rules = [
        (v["NAUTILUS_BATCH_MAX_MESSAGES"] >= 1, "NAUTILUS_BATCH_MAX_MESSAGES must be >= 1"),
        (v["NAUTILUS_BATCH_MAX_WAIT_SECONDS"] > 0, "NAUTILUS_BATCH_MAX_WAIT_SECONDS must be > 0"),
        (
            0 < v["NAUTILUS_HANDOVER_LEAD_SECONDS"] < v["NAUTILUS_RUN_LIFETIME_SECONDS"],
            "NAUTILUS_HANDOVER_LEAD_SECONDS must be > 0 and below NAUTILUS_RUN_LIFETIME_SECONDS",
        ),
        (
            0 < v["NAUTILUS_RUN_IDLE_SECONDS"] < v["NAUTILUS_WATCHDOG_SILENT_SECONDS"],
            "NAUTILUS_RUN_IDLE_SECONDS must be > 0 and below NAUTILUS_WATCHDOG_SILENT_SECONDS",
        ),
        (v["NAUTILUS_LATENESS_BOUND_SECONDS"] > 0, "NAUTILUS_LATENESS_BOUND_SECONDS must be > 0"),
        (v["NAUTILUS_RUN_RSS_HANDOVER_MB"] > 0, "NAUTILUS_RUN_RSS_HANDOVER_MB must be > 0"),
        (v["NAUTILUS_PRODUCT_RUN_NICE"] in range(20), "NAUTILUS_PRODUCT_RUN_NICE must be an integer from 0 to 19"),
    ]
    _raise_if(problems + [why for ok, why in rules if not ok])
    return Streaming(int(v["NAUTILUS_BATCH_MAX_MESSAGES"]), *(v[k] for k in list(STREAMING_VARS)[1:]))


# Sensors and the daemon (sensors/, scripts/dagster_daemon.py): variable -> (default, meaning, smallest, largest).
SENSOR_VARS = {
    "NAUTILUS_SENSOR_INTERVAL_SECONDS": (4, "each ingest sensor is evaluated this often", 1, 3600),
    "NAUTILUS_TIMER_SECONDS": (30, "a batch this often where the broker cannot report a backlog", 1, 86400),
    "NAUTILUS_SAFETY_INTERVAL_SECONDS": (120, "a batch at least this often, whatever the reported backlog", 1, 86400),
    "NAUTILUS_BACKLOG_STALENESS_SECONDS": (0, "a metrics backlog this soon after a batch ended predates it", 0, 3600),
    "NAUTILUS_EVENTS_SENSOR_INTERVAL_SECONDS": (
        5,
        "materializations are announced on system/events this often",
        1,
        3600,
    ),
    # new code servers this often (stock dagster: every 60 s), and at once when one has died; the daemon checks
    # its threads every 5 s
    "NAUTILUS_CODE_RELOAD_SECONDS": (600, "the daemon starts new code servers this often", 5, 86400),
}


@dataclass(frozen=True)
class Sensors:
    interval_s: float
    timer_s: float
    safety_s: float
    backlog_staleness_s: float
    events_interval_s: float
    code_reload_s: float


def sensors(env=None) -> Sensors:
    env = os.environ if env is None else env
    problems: list[str] = []
    v = numbers(env, {k: d for k, (d, *_) in SENSOR_VARS.items()}, problems)
    problems += [
        f"{k}={env.get(k)!r}: expected a number from {lo} to {hi}"
        for k, (_, _, lo, hi) in SENSOR_VARS.items()
        if not lo <= v[k] <= hi
    ]
    _raise_if(problems)
    return Sensors(*v.values())


def code_reload_seconds(env=None) -> float:
    return sensors(env).code_reload_s


# Lake maintenance (nautilus_assets/market_data/maintenance.py): variable -> (default, meaning).
LAKE_VARS = {
    "NAUTILUS_LAKE_MAX_FILES_PER_PARTITION": (16, "a bronze date partition with more files is compacted"),
    "NAUTILUS_LAKE_RETENTION_DAYS": (7, "vacuum keeps the files of this many days: time travel reaches that far"),
}


@dataclass(frozen=True)
class LakeMaintenance:
    max_files_per_partition: int
    retention_days: float


def lake_maintenance(env=None) -> LakeMaintenance:
    env = os.environ if env is None else env
    problems: list[str] = []
    v = numbers(env, {k: d for k, (d, _) in LAKE_VARS.items()}, problems)
    if v["NAUTILUS_LAKE_MAX_FILES_PER_PARTITION"] < 1 or v["NAUTILUS_LAKE_RETENTION_DAYS"] < 0:
        problems.append("NAUTILUS_LAKE_MAX_FILES_PER_PARTITION must be >= 1 and NAUTILUS_LAKE_RETENTION_DAYS >= 0")
    _raise_if(problems)
    return LakeMaintenance(int(v["NAUTILUS_LAKE_MAX_FILES_PER_PARTITION"]), v["NAUTILUS_LAKE_RETENTION_DAYS"])


@dataclass(frozen=True)
class Settings:
    instance: str
    home: Path
    port_base: int
    env: dict[str, str] = field(repr=False)  # resolved NAUTILUS/AWS/PULSAR/CLICKHOUSE/DAGSTER_PG variables
    managed: frozenset = frozenset()  # backends this project starts itself (not pointed at production)
    source: dict = field(default_factory=dict, repr=False, compare=False)  # the environment it was loaded from

    def port(self, name: str) -> int:
        return self.port_base + PORTS[name]

    def __getitem__(self, key: str) -> str:
        if key not in self.env and key in CREDENTIAL_KEYS:
            raise SettingsError(
                f"{key} is not set and {self.home / 'credentials.env'} does not hold it: start the "
                "platform's services once (scripts/run, `nautilus services start`), or set it"
            )
        return self.env[key]

    def reload(self) -> Settings:
        """Loaded again from the same environment (after the start-up generated the credentials)."""
        return load(self.source)

    @property
    def streaming(self) -> Streaming:
        return streaming(self.env)

    @property
    def sensors(self) -> Sensors:
        return sensors(self.env)

    @property
    def lake(self) -> LakeMaintenance:
        return lake_maintenance(self.env)

    @property
    def pg_connect_timeout_s(self) -> int:
        return int(self.env["NAUTILUS_PG_CONNECT_TIMEOUT_SECONDS"])

    @property
    def pg_statement_timeout_s(self) -> float:
        return float(self.env["NAUTILUS_PG_STATEMENT_TIMEOUT_SECONDS"])

    @property
    def fault_plan(self) -> Path | None:
        """A fault-injection plan (tests only; nautilus_assets/market_data/faults.py)."""
        return Path(self.env["NAUTILUS_FAULT_PLAN"]) if self.env.get("NAUTILUS_FAULT_PLAN") else None

    @property
    def instruments(self) -> list[str]:
        return [i.strip() for i in self.env["NAUTILUS_INSTRUMENTS"].split(",") if i.strip()]

    @property
    def webserver_url(self) -> str:
        return f"http://127.0.0.1:{self.port('webserver')}"

    @property
    def mc_backend(self) -> str:
        value = self.env.get("NAUTILUS_MC_BACKEND", "")
        if value not in ("", "numpy", "mlx"):
            raise SettingsError(f"NAUTILUS_MC_BACKEND={value!r}: expected numpy or mlx (or empty: by the machine)")
        return value

    @property
    def stress_scenarios(self) -> Path:
        value = self.env.get("NAUTILUS_STRESS_SCENARIOS", "")
        path = Path(value) if value else Path(__file__).parent.parent / "nautilus_assets" / "risk" / "scenarios.yaml"
        if not path.is_file():
            raise SettingsError(f"NAUTILUS_STRESS_SCENARIOS={value!r}: no such file")
        return path

    def api_port(self, product: str) -> int:
        if self.env.get(f"NAUTILUS_API_PORT_{product.upper()}"):
            return int(self.env[f"NAUTILUS_API_PORT_{product.upper()}"])
        if not self.managed:  # production: every backend is a server by URL
            return API_PORTS[product]
        return self.port_base + API_PORT_OFFSET + list(API_PORTS).index(product)

    def api_url(self, product: str) -> str:
        host = self["NAUTILUS_API_HOST"]
        return f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{self.api_port(product)}/api/v1/{product}"


# Other numeric settings: variable -> (smallest, largest, integer). Read where they are used; checked here once.
BOUNDS = {
    "NAUTILUS_PORT_BASE": (1024, 65535 - 40, True),
    "DAGSTER_PG_PORT": (1, 65535, True),
    "CLICKHOUSE_PORT": (1, 65535, True),
    "NAUTILUS_CACHE_MAX_AGE_SECONDS": (0, 86400, False),
    "NAUTILUS_CACHE_REFRESH_SECONDS": (0, 86400, False),
    "NAUTILUS_API_NICE": (0, 19, True),
    "DAGSTER_GRPC_TIMEOUT_SECONDS": (1, 3600, False),
    "NAUTILUS_PG_CONNECT_TIMEOUT_SECONDS": (1, 600, True),
    "NAUTILUS_PG_STATEMENT_TIMEOUT_SECONDS": (0, 86400, False),
    **{f"NAUTILUS_API_PORT_{p.upper()}": (1, 65535, True) for p in API_PORTS},
}


def validate(env: dict) -> None:
    """Every problem of the resolved settings at once, each naming its variable (SettingsError)."""
    problems = []
    for name, (lo, hi, integer) in BOUNDS.items():
        if not env.get(name):
            continue
        try:
            x = number(env, name, 0)
        except SettingsError as e:
            problems.append(str(e))
            continue
        if not lo <= x <= hi or (integer and x != int(x)):
            kind = "an integer" if integer else "a number"
            problems.append(f"{name}={env[name]!r}: expected {kind} from {lo} to {hi}")
    for check in (streaming, lake_maintenance, sensors):
        try:
            check(env)
        except SettingsError as e:
            problems.append(str(e))
    if env.get("CLICKHOUSE_SECURE", "false").lower() not in ("true", "false"):
        problems.append(f"CLICKHOUSE_SECURE={env['CLICKHOUSE_SECURE']!r}: expected true or false")
    if not [i for i in env.get("NAUTILUS_INSTRUMENTS", "").split(",") if i.strip()]:
        problems.append("NAUTILUS_INSTRUMENTS is empty: expected a comma-separated list such as AAPL.XNAS,SPY.ARCX")
    for prop in (Settings.mc_backend, Settings.stress_scenarios):
        try:
            prop.fget(Settings("", Path("."), 0, env))
        except SettingsError as e:
            problems.append(str(e))
    if problems:
        raise SettingsError("invalid configuration:\n  " + "\n  ".join(problems))


def instance_environ(instance: str, port_base: int, **extra: str) -> dict[str, str]:
    """This process's environment for another instance: without the settings resolved for this one (backends,
    credentials, homes), so `load(env)` and the processes started with it resolve their own."""
    own = ("NAUTILUS_", "DAGSTER_", "AWS_", "PULSAR_", "CLICKHOUSE_", "S3_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(own)}
    return {**env, "NAUTILUS_INSTANCE": instance, "NAUTILUS_PORT_BASE": str(port_base), **extra}


def load(environ=None) -> Settings:
    """The settings resolved from the environment (or `environ`, e.g. another instance's), validated. Reads only:
    the credentials are generated by the services' start-up (`ensure_credentials`), nothing is exported."""
    E = os.environ if environ is None else environ

    def _env(name: str, default: str = "") -> str:
        return E.get(name) or default

    instance = _env("NAUTILUS_INSTANCE", "run")
    base = int(number(E, "NAUTILUS_PORT_BASE", 15000))
    home = Path(_env("NAUTILUS_HOME", f"/var/tmp/nautilus/{instance}"))
    p = {k: base + v for k, v in PORTS.items()}
    creds = {k: E[k] for k in CREDENTIAL_KEYS if E.get(k)}
    broker = _env("NAUTILUS_PULSAR_BROKER", "apache").lower()
    if broker not in PULSAR_BROKERS:
        raise SettingsError(f"NAUTILUS_PULSAR_BROKER={broker!r}: expected one of {', '.join(PULSAR_BROKERS)}")
    external_pulsar = bool(E.get("PULSAR_SERVICE_URL"))
    production = {
        "postgres": "DAGSTER_PG_HOST",
        "s3": "S3_ENDPOINT_URL",
        "pulsar": "PULSAR_SERVICE_URL",
        "clickhouse": "CLICKHOUSE_HOST",
        "redis": "NAUTILUS_REDIS_URL",
    }
    if "NAUTILUS_MANAGED" in E:  # decided by the first load; apply() then filled the URLs in
        managed = frozenset(filter(None, E["NAUTILUS_MANAGED"].split(",")))
    else:
        managed = frozenset(k for k, var in production.items() if not E.get(var))
    if len(creds) < len(CREDENTIAL_KEYS):  # the generated ones fill in what production settings left out
        creds = {**read_credentials(home), **creds}
    env = {
        "NAUTILUS_INSTANCE": instance,
        "NAUTILUS_HOME": str(home),
        "NAUTILUS_PORT_BASE": str(base),
        "DAGSTER_HOME": _env("DAGSTER_HOME", str(home / "dagster_home")),
        "DAGSTER_PG_HOST": _env("DAGSTER_PG_HOST", "127.0.0.1"),
        "DAGSTER_PG_PORT": _env("DAGSTER_PG_PORT", str(p["postgres"])),
        "DAGSTER_PG_USER": _env("DAGSTER_PG_USER", "nautilus"),
        "DAGSTER_PG_DB": _env("DAGSTER_PG_DB", "dagster"),
        "S3_ENDPOINT_URL": _env("S3_ENDPOINT_URL", f"http://127.0.0.1:{p['s3']}"),
        "AWS_REGION": _env("AWS_REGION", "us-east-1"),
        "NAUTILUS_LAKE_BUCKET": _env("NAUTILUS_LAKE_BUCKET", "nautilus-lake"),
        "NAUTILUS_LOGS_BUCKET": _env("NAUTILUS_LOGS_BUCKET", "nautilus-dagster-logs"),
        "NAUTILUS_PULSAR_BROKER": broker,
        "PULSAR_SERVICE_URL": _env("PULSAR_SERVICE_URL", f"pulsar://127.0.0.1:{p['pulsar']}"),
        "PULSAR_ADMIN_URL": _env(
            "PULSAR_ADMIN_URL", "" if external_pulsar or broker == "lite" else f"http://127.0.0.1:{p['pulsar_web']}"
        ),
        "PULSAR_METRICS_URL": _env(
            "PULSAR_METRICS_URL",
            "" if external_pulsar or broker == "apache" else f"http://127.0.0.1:{p['pulsar_metrics']}/metrics",
        ),
        "CLICKHOUSE_HOST": _env("CLICKHOUSE_HOST", "127.0.0.1"),
        "CLICKHOUSE_PORT": _env("CLICKHOUSE_PORT", str(p["clickhouse"]) if "clickhouse" in managed else "8123"),
        "CLICKHOUSE_USER": _env("CLICKHOUSE_USER", "default"),
        "CLICKHOUSE_SECURE": _env("CLICKHOUSE_SECURE", "false"),
        "NAUTILUS_CHDB_PATH": _env("NAUTILUS_CHDB_PATH", str(home / "chdb")),  # the local server's data
        "NAUTILUS_REDIS_URL": _env("NAUTILUS_REDIS_URL", f"redis://127.0.0.1:{p['redis']}/0"),
        "NAUTILUS_REDIS_PREFIX": _env("NAUTILUS_REDIS_PREFIX", f"nautilus:{instance}"),
        # the product APIs serve a kind of current state from Redis while it was written this recently (else from
        # the store, and say so in X-Nautilus-Source), and look every REFRESH seconds whether to rebuild it from
        # the store ahead of that (nautilus_assets/current.py; 0: never)
        "NAUTILUS_CACHE_MAX_AGE_SECONDS": _env("NAUTILUS_CACHE_MAX_AGE_SECONDS", "60"),
        "NAUTILUS_CACHE_REFRESH_SECONDS": _env("NAUTILUS_CACHE_REFRESH_SECONDS", "5"),
        "NAUTILUS_API_HOST": _env("NAUTILUS_API_HOST", "127.0.0.1"),
        # the API process (and its queries on the ClickHouse server) yields the CPU to ingestion by this much
        "NAUTILUS_API_NICE": _env("NAUTILUS_API_NICE", "5"),
        # tooling: where Apache Pulsar's jars are cached (shared by every instance), its broker's log level, and the
        # Chromium the UI test drives
        "NAUTILUS_PULSAR_CACHE": _env(
            "NAUTILUS_PULSAR_CACHE", str(Path(__file__).resolve().parent.parent / ".nautilus" / "pulsar")
        ),
        "NAUTILUS_PULSAR_LOG_LEVEL": _env("NAUTILUS_PULSAR_LOG_LEVEL", "info"),
        "NAUTILUS_CHROMIUM": _env("NAUTILUS_CHROMIUM", "/usr/bin/chromium"),
        # Monte Carlo VaR backend: numpy | mlx (empty: MLX where it has a GPU, else NumPy; risk/montecarlo.py)
        "NAUTILUS_MC_BACKEND": _env("NAUTILUS_MC_BACKEND", ""),
        # user-defined stress scenarios (YAML; empty: nautilus_assets/risk/scenarios.yaml)
        "NAUTILUS_STRESS_SCENARIOS": _env("NAUTILUS_STRESS_SCENARIOS", ""),
        **{v: E[v] for v in (f"NAUTILUS_API_PORT_{p.upper()}" for p in API_PORTS) if E.get(v)},
        # production ClickHouse users' passwords, where they differ from the PostgreSQL ones (`nautilus access`)
        **{v: E[v] for v in (access.password_var(r, "CH") for r in access.ROLES) if E.get(v)},
        "NAUTILUS_INSTRUMENTS": _env("NAUTILUS_INSTRUMENTS", "AAPL.XNAS,MSFT.XNAS,SPY.ARCX,ESZ6.GLBX,BTCUSDT.BINANCE"),
        **{k: _env(k, str(d)) for k, (d, _) in {**STREAMING_VARS, **LAKE_VARS}.items()},
        # PostgreSQL connections give up connecting, and cancel a statement, after these (0: no statement limit)
        "NAUTILUS_PG_CONNECT_TIMEOUT_SECONDS": _env("NAUTILUS_PG_CONNECT_TIMEOUT_SECONDS", "10"),
        "NAUTILUS_PG_STATEMENT_TIMEOUT_SECONDS": _env("NAUTILUS_PG_STATEMENT_TIMEOUT_SECONDS", "600"),
        **{k: _env(k, str(d)) for k, (d, *_) in SENSOR_VARS.items()},
        **{k: E[k] for k in ("NAUTILUS_FAULT_PLAN",) if E.get(k)},
        # The daemon's calls to a code server (launching a run) time out after 60 s by default: too short on 2 cores.
        "DAGSTER_GRPC_TIMEOUT_SECONDS": _env("DAGSTER_GRPC_TIMEOUT_SECONDS", "180"),
        **creds,
    }
    validate({**E, **env})
    env["NAUTILUS_MANAGED"] = ",".join(sorted(managed))
    env["DAGSTER_PG_URL"] = E.get("DAGSTER_PG_URL") or dagster_pg_url(
        env, home / "pg" if "postgres" in managed else None
    )
    return Settings(instance=instance, home=home, port_base=base, env=env, managed=managed, source=dict(E))


def dagster_pg_url(env: dict, socket_dir: Path | None) -> str:
    """The Dagster instance storage's URL (dagster.yaml). The project's own server is reached through its Unix
    socket (in the 0700 data directory; local connections trust the OS user): dagster-postgres opens a connection
    per query outside the webserver, and a TCP connection with SCRAM costs ~3 ms of client CPU and a backend
    fork each time, which under a streaming load added up to a good part of the daemon's CPU."""
    user, db = quote(env["DAGSTER_PG_USER"]), quote(env["DAGSTER_PG_DB"])
    statement_ms = int(float(env["NAUTILUS_PG_STATEMENT_TIMEOUT_SECONDS"]) * 1000)
    timeouts = (
        f"connect_timeout={int(env['NAUTILUS_PG_CONNECT_TIMEOUT_SECONDS'])}"
        f"&options={quote(f'-c statement_timeout={statement_ms}', safe='')}"
    )
    if socket_dir is not None:
        return (
            f"postgresql+psycopg2://{user}@/{db}?host={quote(str(socket_dir))}&port={env['DAGSTER_PG_PORT']}&{timeouts}"
        )
    if not env.get("DAGSTER_PG_PASSWORD"):
        raise SettingsError(
            f"DAGSTER_PG_PASSWORD is not set: DAGSTER_PG_HOST={env['DAGSTER_PG_HOST']} names a server "
            "this project does not start, so its password must come from the environment"
        )
    return (
        f"postgresql+psycopg2://{user}:{quote(env['DAGSTER_PG_PASSWORD'], safe='')}@{env['DAGSTER_PG_HOST']}:"
        f"{env['DAGSTER_PG_PORT']}/{db}?{timeouts}"
    )


def apply(settings: Settings) -> Settings:
    """Export the resolved settings into this process's environment, for the processes an entry point starts (the
    CLI, the test harness, benches) and the Dagster instance it opens; the code location itself never calls it."""
    for k, v in settings.env.items():
        os.environ.setdefault(k, v)
    return settings


def build_resources(settings: Settings | None = None, for_dagster: bool = False) -> dict:
    """The backends' resources. For Definitions, secrets stay dg.EnvVar (resolved in the run, never shown)."""
    import dagster as dg

    from .clickhouse import ClickHouseResource
    from .lake import LakeResource
    from .postgres import PostgresResource
    from .pulsar import PulsarResource
    from .redis import RedisResource

    s = settings or load()
    secret = (lambda k: dg.EnvVar(k)) if for_dagster else (lambda k: s[k])

    def pg_role(role: str) -> PostgresResource:
        """A connection to the database `nautilus` as one of the login roles of resources/access.py."""
        return PostgresResource(
            host=s["DAGSTER_PG_HOST"],
            port=int(s["DAGSTER_PG_PORT"]),
            user=role,
            password=secret(access.password_var(role)),
            dbname="nautilus",
            connect_timeout_s=s.pg_connect_timeout_s,
            statement_timeout_s=s.pg_statement_timeout_s,
        )

    return {
        "clickhouse": ClickHouseResource(
            host=s["CLICKHOUSE_HOST"],
            port=int(s["CLICKHOUSE_PORT"]),
            username=s["CLICKHOUSE_USER"],
            password=secret("CLICKHOUSE_PASSWORD"),
            secure=s["CLICKHOUSE_SECURE"].lower() == "true",
            heartbeat_s=s.streaming.watchdog_silent_s / 5,
        ),
        "lake": LakeResource(
            endpoint_url=s["S3_ENDPOINT_URL"],
            access_key_id=secret("AWS_ACCESS_KEY_ID"),
            secret_access_key=secret("AWS_SECRET_ACCESS_KEY"),
            region=s["AWS_REGION"],
            bucket=s["NAUTILUS_LAKE_BUCKET"],
        ),
        "pulsar": PulsarResource(
            service_url=s["PULSAR_SERVICE_URL"], admin_url=s["PULSAR_ADMIN_URL"], metrics_url=s["PULSAR_METRICS_URL"]
        ),
        "redis": RedisResource(
            url=s["NAUTILUS_REDIS_URL"], password=secret("NAUTILUS_REDIS_PASSWORD"), prefix=s["NAUTILUS_REDIS_PREFIX"]
        ),
        # the portfolio store, as the portfolio domain's login role (resources/access.py: it owns schema portfolio)
        "postgres": pg_role("portfolio"),
        # the portfolio product read by the risk domain, under the risk role's grants (a declared reader)
        "postgres_risk": pg_role("risk"),
        # read-only on every product (the governance audit's connection)
        "postgres_governance": pg_role(access.GOVERNANCE),
    }
