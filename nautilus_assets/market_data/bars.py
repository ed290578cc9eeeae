"""How other domains read the 1-minute bars product (stored products are the contract between domains)."""

import pandas as pd

from resources.clickhouse import ClickHouseResource

BARS = (
    "(SELECT instrument_id, minute, open, high, low, close, vwap, volume, trade_count, buy_volume, sell_volume, "
    "version FROM market_data.bars_1m FINAL)"
)
CURSOR_MARGIN_NS = 60 * 10**9  # re-read bars written up to a minute before the cursor (concurrent writers)


def changed_since(ch: ClickHouseResource, cursor: int) -> dict[str, pd.Timestamp]:
    """Per instrument, the first minute whose bar was (re)written after version `cursor`."""
    with ch.session() as c:  # rows, not a DataFrame: chDB returns an empty one without its columns
        rows = c.query(
            f"SELECT instrument_id, min(minute) AS since FROM {BARS} WHERE version > %(c)s GROUP BY instrument_id",
            parameters={"c": max(0, cursor - CURSOR_MARGIN_NS)},
        ).result_rows
    return {str(inst): pd.Timestamp(since) for inst, since in rows}


def since_condition(since: dict[str, pd.Timestamp], alias: str = "", op: str = ">=") -> tuple[str, dict]:
    """A WHERE condition (and its parameters) for "this instrument's rows from that minute on" (`op` "<": before
    it), per instrument: a primary-key range of (instrument_id, minute) tables, so its cost follows the change, not
    the table."""
    if not since:
        return "0", {}
    terms, params = [], {}
    for k, (inst, m) in enumerate(sorted(since.items())):
        terms.append(f"({alias}instrument_id = %(i{k})s AND {alias}minute {op} toDateTime(%(m{k})s, 'UTC'))")
        params.update({f"i{k}": inst, f"m{k}": int(pd.Timestamp(m).timestamp())})
    return "(" + " OR ".join(terms) + ")", params
