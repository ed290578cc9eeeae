"""The code location: every domain's assets, jobs and sensors, bound to the backends chosen by settings."""

import dagster as dg

from resources.settings import build_resources
from sensors.late_trades import late_trades_sensor
from sensors.pulsar_ingest import INGEST_SENSORS
from sensors.sla import SLA_SENSORS
from sensors.streaming_products import PRODUCT_JOBS, PRODUCT_SENSORS
from sensors.system_events import SYSTEM_SENSORS

from .analytics.assets import ASSETS as ANALYTICS_ASSETS
from .api.sla import api_sla
from .contracts import contract_checks
from .market_data.assets import ASSETS as MARKET_DATA_ASSETS
from .market_data.assets import INGEST_JOBS
from .market_data.daily import DAILY_ASSETS as MARKET_DATA_DAILY
from .market_data.maintenance import INTEGRITY_CHECKS, INTEGRITY_JOB, lake_maintenance_job
from .market_data.maintenance import SCHEDULES as MAINTENANCE
from .microstructure.assets import ASSETS as MICROSTRUCTURE_ASSETS
from .ml.assets import ASSETS as ML_ASSETS
from .pools import priority_tags
from .portfolio.assets import ASSETS as PORTFOLIO_ASSETS
from .portfolio.daily import DAILY_ASSETS as PORTFOLIO_DAILY
from .replay import EOD_REPLAY, EOD_REPLAY_JOB, LATE_TRADES_JOB
from .risk.assets import ASSETS as RISK_ASSETS

# The streaming products (indicators, VPIN, positions) are long-lived runs that their sensors launch from the
# bars' change feed (nautilus_assets/streaming.py); the day-level products follow through declarative automation
# (daily bars after midnight UTC: on_cron; NAV and risk: eager). Assets without an automation condition are left
# to their sensors.
AUTOMATION = dg.AutomationConditionSensorDefinition(
    "products_automation",
    target=dg.AssetSelection.all(),
    run_tags=priority_tags("end_of_day"),
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=10,
)

ASSETS = [
    *MARKET_DATA_ASSETS,
    *ANALYTICS_ASSETS,
    *MICROSTRUCTURE_ASSETS,
    *PORTFOLIO_ASSETS,
    *MARKET_DATA_DAILY,
    *PORTFOLIO_DAILY,
    *RISK_ASSETS,
    *ML_ASSETS,
]
# Every stored table against its committed contract (contracts/), hourly and on demand: a schema drifted by hand or
# by a migration that was not reviewed shows as a failed check on the asset.
CONTRACTS = contract_checks(ASSETS)
CONTRACTS_JOB = dg.define_asset_job(
    "data_contracts",
    selection=dg.AssetSelection.checks(CONTRACTS),
    description="Each stored table's columns and types against its product's committed ODCS contract",
)
CONTRACTS_SCHEDULE = dg.ScheduleDefinition(
    name="data_contracts_schedule",
    job=CONTRACTS_JOB,
    cron_schedule="47 * * * *",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    execution_timezone="UTC",
    description="Hourly: stored tables against their contracts",
)

defs = dg.Definitions(
    assets=ASSETS,
    asset_checks=[*INTEGRITY_CHECKS, api_sla, CONTRACTS],
    jobs=[
        *INGEST_JOBS.values(),
        *PRODUCT_JOBS,
        EOD_REPLAY_JOB,
        LATE_TRADES_JOB,
        INTEGRITY_JOB,
        lake_maintenance_job,
        CONTRACTS_JOB,
    ],
    schedules=[EOD_REPLAY, *MAINTENANCE, CONTRACTS_SCHEDULE],
    sensors=[*INGEST_SENSORS, *PRODUCT_SENSORS, AUTOMATION, late_trades_sensor, *SYSTEM_SENSORS, *SLA_SENSORS],
    resources=build_resources(for_dagster=True),
)
