"""Apache Pulsar standalone for the platform and the tests: fetch, configure, start, health-check.

The broker's jars come from Maven Central (scripts/pulsar/pom.xml: org.apache.pulsar:pulsar-broker) with the
machine's Java 17 and Maven, and are cached in the ignored `.nautilus/pulsar/lib` (Maven's local repository
beside it, `.nautilus/pulsar/m2`); they are fetched only when missing. Each instance writes its own
configuration and keeps its data under NAUTILUS_HOME/pulsar: everything bound to 127.0.0.1, metadata in a local
RocksDB store (no ZooKeeper), one in-process bookie, functions worker and stream storage off.
Ports (offsets from NAUTILUS_PORT_BASE): broker +10, admin/web +13, bookie +14.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import time
from pathlib import Path

import requests

from resources.settings import load

ROOT = Path(__file__).resolve().parent.parent
POM = ROOT / "scripts" / "pulsar" / "pom.xml"
CACHE = Path(load()["NAUTILUS_PULSAR_CACHE"])
LIB = CACHE / "lib"
MAIN_JAR = "pulsar-broker-4.0.7.jar"  # keep in step with pulsar.version in scripts/pulsar/pom.xml
JVM_OPTS = [
    "-Xms256m",
    "-Xmx1g",
    "-XX:MaxDirectMemorySize=512m",
    "-XX:+UseG1GC",
    "-XX:MaxGCPauseMillis=50",
    "-XX:ActiveProcessorCount=2",
    # what Apache Pulsar's bin/pulsar opens, so the broker can read container CPU and GC figures
    "--add-opens",
    "java.base/jdk.internal.platform=ALL-UNNAMED",
    "--add-opens",
    "java.management/sun.management=ALL-UNNAMED",
    "--add-opens",
    "java.base/java.lang=ALL-UNNAMED",
    "--add-opens",
    "java.base/sun.net=ALL-UNNAMED",
    "-Dio.netty.tryReflectionSetAccessible=true",
    "-Dpulsar.allocator.exit_on_oom=true",
]


def log(msg: str) -> None:
    print(f"[pulsar] {msg}", flush=True)


def fetched() -> bool:
    return (LIB / MAIN_JAR).exists() and (LIB / ".complete").exists()


def fetch() -> float:
    """Resolve the broker and its dependencies from Maven Central into LIB (once; later calls return at once).
    Serialized across processes by a lock file; the jars land in a temporary folder renamed when complete."""
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / "fetch.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if fetched():
            return 0.0
        for tool in ("java", "mvn"):
            if not shutil.which(tool):
                raise RuntimeError(
                    f"Apache Pulsar needs Java 17 and Maven ('{tool}' not found); "
                    "install them (Debian: openjdk-17-jre-headless maven) or set NAUTILUS_PULSAR_BROKER=lite"
                )
        log(f"fetching org.apache.pulsar:pulsar-broker and its dependencies from Maven Central into {LIB} ...")
        t = time.time()
        tmp = CACHE / "lib.partial"
        shutil.rmtree(tmp, ignore_errors=True)
        cmd = [
            "mvn",
            "-B",
            "-q",
            "-f",
            str(POM),
            f"-Dmaven.repo.local={CACHE / 'm2'}",
            "dependency:copy-dependencies",
            f"-DoutputDirectory={tmp}",
        ]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(
                f"Maven could not fetch Apache Pulsar (exit {r.returncode}):\n{r.stdout[-4000:]}{r.stderr[-4000:]}"
            )
        (tmp / ".complete").write_text(f"{len(list(tmp.glob('*.jar')))} jars\n")
        shutil.rmtree(LIB, ignore_errors=True)
        tmp.rename(LIB)
        took = time.time() - t
        log(f"fetched {len(list(LIB.glob('*.jar')))} jars in {took:.1f}s")
        return took


def config_text(s) -> str:
    """The broker's (and its bookie's) configuration for this instance."""
    return f"""# Written by scripts/pulsar_broker.py for instance {s.instance}; rewritten at every start.
clusterName=standalone
bindAddress=127.0.0.1
advertisedAddress=127.0.0.1
brokerServicePort={s.port("pulsar")}
webServicePort={s.port("pulsar_web")}
# metadata: local RocksDB store (PulsarStandalone's default since 2.11); no ZooKeeper
# bookie (in-process, one): loopback only, fixed port
bookiePort={s.port("pulsar_bookie")}
allowEphemeralPorts=true
listeningInterface=lo
allowLoopback=true
httpServerEnabled=false
journalWriteData=true
journalSyncData=false
managedLedgerDefaultEnsembleSize=1
managedLedgerDefaultWriteQuorum=1
managedLedgerDefaultAckQuorum=1
# off: functions worker, websocket proxy, transactions, topic-level policies (their system topics)
functionsWorkerEnabled=false
webSocketServiceEnabled=false
transactionCoordinatorEnabled=false
systemTopicEnabled=false
topicLevelPoliciesEnabled=false
# topics: the project creates them (resources/topics.py); auto-creation stays on for ad-hoc topics
allowAutoTopicCreation=true
allowAutoTopicCreationType=non-partitioned
brokerDeleteInactiveTopicsEnabled=false
# retention comes from the namespaces' policies
defaultRetentionTimeInMinutes=0
defaultRetentionSizeInMB=0
brokerShutdownTimeoutMs=3000
numIOThreads=2
numHttpServerThreads=4
numOrderedExecutorThreads=2
managedLedgerNumSchedulerThreads=2
bookkeeperClientNumWorkerThreads=2
loadBalancerEnabled=false
"""


LOG4J = """status = warn
appender.file.type = Console
appender.file.name = console
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = %d{ISO8601} %-5level [%t] %c{1} - %msg%n
rootLogger.level = {level}
rootLogger.appenderRef.console.ref = console
logger.bk.name = org.apache.bookkeeper
logger.bk.level = warn
"""


def argv(s) -> list[str]:
    d = s.home / "pulsar"
    d.mkdir(parents=True, exist_ok=True)
    (d / "standalone.conf").write_text(config_text(s))
    (d / "log4j2.properties").write_text(LOG4J.replace("{level}", s["NAUTILUS_PULSAR_LOG_LEVEL"]))
    return [
        "java",
        *JVM_OPTS,
        f"-Dlog4j2.configurationFile={d / 'log4j2.properties'}",
        f"-Dpulsar.log.dir={d}",
        "-cp",
        f"{LIB}/*",
        "org.apache.pulsar.PulsarStandaloneStarter",
        "--config",
        str(d / "standalone.conf"),
        "--no-functions-worker",
        "--no-stream-storage",
        "--advertised-address",
        "127.0.0.1",
        "--metadata-dir",
        str(d / "metadata"),
        "--bookkeeper-dir",
        str(d / "bookkeeper"),
        "--bookkeeper-port",
        str(s.port("pulsar_bookie")),
        # never used: an existing ZooKeeper folder would switch PulsarStandalone to ZooKeeper
        "--zookeeper-dir",
        str(d / "no-zookeeper"),
    ]


def admin_url(s) -> str:
    return f"http://127.0.0.1:{s.port('pulsar_web')}"


def healthy(s, timeout: float = 5) -> bool:
    """The broker's own health check: it produces and consumes on a heartbeat topic."""
    try:
        r = requests.get(f"{admin_url(s)}/admin/v2/brokers/health", timeout=timeout)
        return r.status_code == 200 and r.text.strip() == "ok"
    except requests.RequestException:
        return False


def wait_healthy(s, pid: int | None = None, timeout: float = 180) -> None:
    deadline = time.time() + timeout
    while not healthy(s, timeout=30):  # the check itself takes seconds on a busy machine
        if pid is not None:
            try:
                os.kill(pid, 0)
                done, _ = os.waitpid(pid, os.WNOHANG)
            except (ProcessLookupError, ChildProcessError):
                done = pid
            if done:
                raise RuntimeError(f"Apache Pulsar exited during start; see {s.home / 'pulsar.log'}")
        if time.time() > deadline:
            raise RuntimeError(f"Apache Pulsar not healthy within {timeout:.0f}s; see {s.home / 'pulsar.log'}")
        time.sleep(0.5)
