"""A small client of the product APIs, for notebooks and tests:

    from nautilus_assets.api.client import read, latest
    df = read("market_analytics", "indicators_1m", instrument="AAPL.XNAS", start="2026-12-04", end="2026-12-05")
    now = latest("portfolio_states")

Bulk reads use Arrow IPC and follow the cursor across pages. The address and the token come from the settings
(NAUTILUS_API_<ROLE>_TOKEN of `role`, default governance) unless given.
"""

from __future__ import annotations

import pandas as pd
import pyarrow as pa
import requests

from resources import access


def _defaults(product: str, url: str | None, token: str | None, role: str) -> tuple[str, str]:
    if url and token:
        return url, token
    from resources.settings import load

    s = load()
    return url or s.api_url(product), token or s[access.token_var(role)]


def read(
    product: str,
    dataset: str,
    *,
    instrument=None,
    portfolio=None,
    start=None,
    end=None,
    as_of=None,
    limit: int = 100_000,
    max_rows: int | None = None,
    url: str | None = None,
    token: str | None = None,
    role: str = access.GOVERNANCE,
    session: requests.Session | None = None,
) -> pd.DataFrame:
    """Every row of `dataset` matching the query (pages of `limit` rows as Arrow), up to `max_rows`."""
    url, token = _defaults(product, url, token, role)
    http = session or requests.Session()
    params = {
        "instrument": instrument,
        "portfolio": portfolio,
        "start": _time(start),
        "end": _time(end),
        "as_of": _time(as_of),
        "limit": limit,
        "format": "arrow",
    }
    tables, cursor, n = [], None, 0
    while True:
        r = http.get(
            f"{url}/{dataset}",
            params={k: v for k, v in {**params, "cursor": cursor}.items() if v is not None},
            headers={"Authorization": f"Bearer {token}"},
            timeout=120,
        )
        _raise(r)
        t = pa.ipc.open_stream(r.content).read_all()
        tables.append(t)
        n += t.num_rows
        cursor = r.headers.get("x-next-cursor")
        if not cursor or (max_rows is not None and n >= max_rows):
            break
    nonempty = [t for t in tables if t.num_columns]
    df = pa.concat_tables(nonempty).to_pandas() if nonempty else pd.DataFrame()
    return df.head(max_rows) if max_rows is not None else df


def latest(
    product: str,
    *,
    instrument=None,
    portfolio=None,
    url: str | None = None,
    token: str | None = None,
    role: str = access.GOVERNANCE,
) -> pd.DataFrame:
    """The product's current state; `df.attrs["source"]` says whether Redis or the store answered."""
    url, token = _defaults(product, url, token, role)
    r = requests.get(
        f"{url}/latest",
        params={k: v for k, v in {"instrument": instrument, "portfolio": portfolio}.items() if v is not None},
        headers={"Authorization": f"Bearer {token}"},
        timeout=60,
    )
    _raise(r)
    df = pd.DataFrame(r.json()["rows"])
    df.attrs["source"] = r.headers.get("x-nautilus-source")
    return df


def _time(v):
    return v.isoformat() if hasattr(v, "isoformat") else v


def _raise(r: requests.Response) -> None:
    if r.status_code >= 400:
        try:
            detail = r.json().get("detail")
        except ValueError:
            detail = r.text[:300]
        raise requests.HTTPError(f"{r.status_code} {r.reason}: {detail}", response=r)
