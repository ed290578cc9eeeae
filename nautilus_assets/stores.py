"""Every product's tables, made by the set-up (`nautilus setup`, scripts/cli.py) rather than by each
materialization: the ClickHouse databases of analytics, microstructure, risk and ml, and the portfolio's
PostgreSQL tables (the market-data product's own are market_data/setup.py's)."""

from nautilus_assets.analytics import store as analytics
from nautilus_assets.microstructure import store as microstructure
from nautilus_assets.ml import store as ml
from nautilus_assets.portfolio import store as portfolio
from nautilus_assets.risk import store as risk


def ensure_all(resources: dict) -> None:
    """Idempotent: CREATE ... IF NOT EXISTS, and the columns added since a store was made."""
    for domain in (analytics, microstructure, risk, ml):
        resources["clickhouse"].ensure(domain.DDL)
    with resources["postgres"].connect() as conn:  # as the portfolio role, which owns schema portfolio
        portfolio.ensure_schema(conn)
        conn.commit()
