"""The code location: every domain's assets, jobs and sensors, bound to the backends chosen by settings."""
from __future__ import annotations

import dagster as dg

from resources.settings import apply, build_resources
from sensors.pulsar_ingest import INGEST_SENSORS

from .market_data.assets import ASSETS as MARKET_DATA_ASSETS, INGEST_JOBS

apply()  # resolve embedded defaults into the environment before resources read it

defs = dg.Definitions(
    assets=[*MARKET_DATA_ASSETS],
    jobs=list(INGEST_JOBS.values()),
    sensors=INGEST_SENSORS,
    resources=build_resources(for_dagster=True),
)
