"""The products the APIs serve: each one's domain (whose readers may read it), owners, SLA targets and the asset
that carries its SLA checks — taken from the product declarations, not repeated."""

from __future__ import annotations

from dataclasses import dataclass

import dagster as dg

from nautilus_assets.analytics.assets import KEY as ANALYTICS_KEY
from nautilus_assets.analytics.assets import PRODUCT as ANALYTICS
from nautilus_assets.market_data.assets import PRODUCT as MARKET_DATA
from nautilus_assets.market_data.assets import QUOTES_KEY
from nautilus_assets.microstructure.assets import KEY as VPIN_KEY
from nautilus_assets.microstructure.assets import PRODUCT as MICROSTRUCTURE
from nautilus_assets.ml.assets import KEY as ML_KEY
from nautilus_assets.ml.assets import PRODUCT as ML
from nautilus_assets.portfolio.assets import KEY as POSITIONS_KEY
from nautilus_assets.portfolio.assets import PRODUCT as PORTFOLIO
from nautilus_assets.product import Product
from nautilus_assets.risk.assets import KEY as RISK_KEY
from nautilus_assets.risk.assets import PRODUCT as RISK
from resources.settings import API_PORTS


@dataclass(frozen=True)
class ApiProduct:
    product: Product
    asset: dg.AssetKey  # the asset whose page shows the API's SLA checks

    @property
    def domain(self) -> str:
        return self.product.group

    @property
    def owners(self) -> tuple[str, ...]:
        return self.product.owners

    @property
    def latency_target_ms(self) -> float:
        return self.product.latency_target_ms

    @property
    def availability_target(self) -> float:
        return self.product.availability_target


PRODUCTS: dict[str, ApiProduct] = {
    p.product.name: p
    for p in (
        ApiProduct(MARKET_DATA, QUOTES_KEY),
        ApiProduct(ANALYTICS, ANALYTICS_KEY),
        ApiProduct(MICROSTRUCTURE, VPIN_KEY),
        ApiProduct(PORTFOLIO, POSITIONS_KEY),
        ApiProduct(RISK, RISK_KEY),
        ApiProduct(ML, ML_KEY),
    )
}
assert set(PRODUCTS) == set(API_PORTS), "every product has an API port (resources/settings.py API_PORTS)"
