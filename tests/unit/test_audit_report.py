"""The lineage audit page (nautilus_assets/audit/templates/lineage_audit.html.j2): every figure of the report shown,
every value escaped, nothing shown as "None". A unit test: no services."""

import html
import re

from nautilus_assets.audit.report import to_html

REP = {
    "instance": "test-<1>",
    "generated_at": "2026-12-05T09:00:00Z",
    "history_days": 7.0,
    "topics": ["persistent://nautilus/market-data/trades", "persistent://nautilus/market-data/level1-quotes"],
    "products": [
        {
            "product": "market_data_feed",
            "group": "market_data",
            "owners": ["team:market-data", "a@b.c"],
            "topics": ["persistent://nautilus/market-data/trades"],
            "assets": {
                "market_data_feed/trades": {
                    "description": "Trades <script>alert('x')</script> & more",
                    "owners": ["team:market-data"],
                    "table": "market_data.trades",
                    "code_version": None,
                    "sla": {
                        "freshness": {"type": "time_window", "fail_after_s": 300.0},
                        "latency_target_ms": 5,
                        "availability_target": 0.999,
                    },
                    "freshness": {
                        "current": "PASS",
                        "history": {"fail": {"episodes": 2, "stale_seconds": 4000, "longest_seconds": 90}},
                        "materializations_in_window": 12,
                        "state_changes": [1, 2, 3],
                        "sla_checks": {
                            "api_sla": {"passed": True, "at": "t1", "p99_latency_ms": 3.2, "availability": 1.0},
                            "other": {"passed": False, "at": "t2"},
                        },
                        "alerts": [
                            {"at": "t3", "nautilus/alert": "stale", "figure": "lag", "value": 400, "target": 300}
                        ],
                    },
                    "edges": [["a/b", "c/d"], ["e", "f"]],
                    "column_lineage": {"price": [{"asset": "x/y", "column": "p"}, {"asset": "z", "column": "q"}]},
                    "last_materializations": [
                        {
                            "timestamp": "t4",
                            "run_id": "r1",
                            "partition": None,
                            "trigger": {"kind": "sensor", "name": "s"},
                            "code_version": "1",
                            "data_version": "dv",
                        }
                    ],
                },
                "market_data_feed/quotes": {
                    "description": None,
                    "owners": [],
                    "table": None,
                    "code_version": "2",
                    "sla": {"freshness": None, "latency_target_ms": None, "availability_target": None},
                    "freshness": {
                        "current": None,
                        "history": {},
                        "materializations_in_window": 0,
                        "state_changes": [],
                        "sla_checks": {},
                        "alerts": [],
                    },
                    "edges": [],
                    "column_lineage": {},
                    "last_materializations": [],
                },
            },
        }
    ],
}


def _text(page: str) -> str:
    page = re.sub(r"<style>.*?</style>", "", page, flags=re.S)
    return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", page))).strip()


def test_the_page_shows_the_report_escaped():
    page = to_html(REP)
    assert "<script>" not in page and "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; more" in page
    assert "test-&lt;1&gt;" in page and "None" not in page
    text = _text(page)
    for shown in (
        "Instance test-<1> , generated 2026-12-05T09:00:00Z; freshness history over 7.0 days",
        "Group market_data ; owners team:market-data, a@b.c",
        'SLA {"fail_after_s": 300.0, "type": "time_window"}; latency target 5 ms; availability 0.999',
        "stale (fail) 2 times, 1.1 h in all, longest 1.5 min; 12 materializations in the window; "
        "3 recorded state changes",
        "api_sla: passed at t1 (p99 3.2 ms, availability 1.0) other: FAILED at t2 (p99 ms, availability )",
        "alerts 1 in the window t3 stale lag=400 (target 300)",
        "upstream a/b → c/d e → f",
        "price x/y.p, z.q",
        "t4 r1 sensor: s 1 dv",
        "stale (fail) 0 times, 0 s in all, longest 0 s; 0 materializations",
    ):
        assert shown in text, (shown, text)
