"""The code location: every domain's assets, jobs and sensors, bound to the backends chosen by settings."""
import dagster as dg

from resources.settings import apply, build_resources
from sensors.pulsar_ingest import INGEST_SENSORS

from .analytics.assets import ASSETS as ANALYTICS_ASSETS
from .market_data.assets import ASSETS as MARKET_DATA_ASSETS, INGEST_JOBS
from .market_data.daily import DAILY_ASSETS as MARKET_DATA_DAILY
from .microstructure.assets import ASSETS as MICROSTRUCTURE_ASSETS
from .ml.assets import ASSETS as ML_ASSETS
from .portfolio.assets import ASSETS as PORTFOLIO_ASSETS
from .portfolio.daily import DAILY_ASSETS as PORTFOLIO_DAILY
from .risk.assets import ASSETS as RISK_ASSETS

apply()  # resolve embedded defaults into the environment before resources read it

# Downstream products follow the market-data micro-batches through declarative automation (eager); daily bars
# run after midnight UTC (on_cron). Assets without an automation condition are left to their sensors.
AUTOMATION = dg.AutomationConditionSensorDefinition(
    "products_automation", target=dg.AssetSelection.all(),
    default_status=dg.DefaultSensorStatus.RUNNING, minimum_interval_seconds=10)

defs = dg.Definitions(
    assets=[*MARKET_DATA_ASSETS, *ANALYTICS_ASSETS, *MICROSTRUCTURE_ASSETS, *PORTFOLIO_ASSETS,
            *MARKET_DATA_DAILY, *PORTFOLIO_DAILY, *RISK_ASSETS, *ML_ASSETS],
    jobs=list(INGEST_JOBS.values()),
    sensors=[*INGEST_SENSORS, AUTOMATION],
    resources=build_resources(for_dagster=True),
)
