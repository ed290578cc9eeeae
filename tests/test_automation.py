"""Declarative automation: a new micro-batch of bars requests every streaming product downstream of it."""
import dagster as dg

from nautilus_assets.analytics.assets import KEY as ANALYTICS
from nautilus_assets.definitions import defs
from nautilus_assets.market_data.assets import BARS_KEY, TRADES_KEY
from nautilus_assets.microstructure.assets import KEY as VPIN
from nautilus_assets.portfolio.assets import KEY as PORTFOLIO


def test_new_bars_request_the_streaming_products():
    with dg.instance_for_test() as inst:
        first = dg.evaluate_automation_conditions(defs=defs, instance=inst)
        for key in (TRADES_KEY, BARS_KEY):
            inst.report_runless_asset_event(dg.AssetMaterialization(asset_key=key))
        after = dg.evaluate_automation_conditions(defs=defs, instance=inst, cursor=first.cursor)
        requested = {k for k in (ANALYTICS, VPIN, PORTFOLIO) if after.get_num_requested(k)}
        assert requested == {ANALYTICS, VPIN, PORTFOLIO}
