"""One sensor per downstream streaming product launches its long-lived run (nautilus_assets/streaming.py) when its
subscription to the bars' change feed (and, for microstructure, the book's; for portfolio, the fills topic) has a
backlog, and its successor
before the run's lifetime ends: the ingest sensors' policy (sensors/pulsar_ingest.py), other topics."""

from nautilus_assets.analytics import assets as analytics
from nautilus_assets.microstructure import assets as microstructure
from nautilus_assets.portfolio import assets as portfolio
from nautilus_assets.portfolio.models import FILLS_TOPIC
from resources.topics import BARS_CHANGES, BOOK_CHANGES
from sensors.pulsar_ingest import build_stream_sensor

PRODUCT_STREAMS = [  # (module, the topics its run consumes)
    (analytics, (BARS_CHANGES,)),
    (microstructure, (BARS_CHANGES, BOOK_CHANGES)),
    (portfolio, (BARS_CHANGES, FILLS_TOPIC)),
]

PRODUCT_SENSORS = [
    build_stream_sensor(
        f"{m.PRODUCT.name}_stream_sensor",
        m.PRODUCT.name,
        topics,
        m.SUBSCRIPTION,
        m.JOB,
        f"Launches the long-lived {m.PRODUCT.name} run when {', '.join(topics)} has messages pending "
        "on its subscription, and its successor before its lifetime ends",
    )
    for m, topics in PRODUCT_STREAMS
]
PRODUCT_JOBS = [m.JOB for m, _ in PRODUCT_STREAMS]
