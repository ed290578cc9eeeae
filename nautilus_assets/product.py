"""What every data product declares: its SLA (freshness policy + latency/availability targets as metadata)
and its engine topic, on which each materialization is announced."""

from dataclasses import dataclass
from datetime import timedelta

import dagster as dg

from resources.topics import ENGINES


def png_markdown(fig, title: str) -> dg.MetadataValue:
    """A matplotlib figure as Markdown metadata with an inline PNG (shown on the asset's materialization)."""
    import base64
    import io

    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80, bbox_inches="tight")
    plt.close(fig)
    return dg.MetadataValue.md(f"![{title}](data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()})")


@dataclass(frozen=True)
class Product:
    name: str  # data product, e.g. market_analytics
    group: str  # Dagster group = domain
    owners: tuple[str, ...]
    engine_topic: str  # short name under persistent://nautilus/engines/ ("": none)
    fail_after: timedelta
    warn_after: timedelta
    latency_target_ms: float
    availability_target: float

    @property
    def topic(self) -> str:
        return ENGINES.topic(self.engine_topic)

    @property
    def freshness(self) -> dg.FreshnessPolicy:
        return dg.FreshnessPolicy.time_window(fail_window=self.fail_after, warn_window=self.warn_after)

    @property
    def metadata(self) -> dict:
        return {
            "nautilus/product": self.name,
            **({"nautilus/engine_topic": self.topic} if self.engine_topic else {}),
            "nautilus/latency_target_ms": self.latency_target_ms,
            "nautilus/availability_target": self.availability_target,
            "nautilus/freshness_fail_after_s": int(self.fail_after.total_seconds()),
            "nautilus/freshness_warn_after_s": int(self.warn_after.total_seconds()),
        }

    def stored_in(self, table) -> dict:
        """An asset's metadata: the product's, and the stored table's name and column schema (tables.Table)."""
        return {"dagster/table_name": table.name, "dagster/column_schema": table.schema, **self.metadata}

    def announce(self, pulsar, asset_key: dg.AssetKey, run_id: str, **facts) -> None:
        """Publish a materialization event on the product's engine topic (the data-mesh contract); `pulsar` is
        the resource or an open client."""
        from resources.system_topics import publish

        event = {"product": self.name, "asset": asset_key.to_user_string(), "run_id": run_id, **facts}
        publish(pulsar, self.topic, [(event, None)])


def job_selection(*assets_defs: dg.AssetsDefinition) -> dg.AssetSelection:
    """A job's assets with the checks they evaluate themselves, and no check defined apart: the API SLA's (sensor
    reported), the whole-table and the contract checks (their own schedules) would otherwise run in every one of
    the product's runs (`checks_for_assets` takes every check of an asset)."""
    keys = [k for a in assets_defs for k in a.keys]
    return dg.AssetSelection.assets(*keys).without_checks() | dg.AssetSelection.checks(
        *[c for a in assets_defs for c in a.check_keys]
    )


# Day-level products are partitioned by UTC trading date; a range backfills as one run where the backend allows.
TRADING_DAYS = dg.DailyPartitionsDefinition(start_date="2024-06-01", timezone="UTC")
# Their SLA: the previous day is in place by 01:00 UTC.
END_OF_DAY = dg.FreshnessPolicy.cron(deadline_cron="0 1 * * *", lower_bound_delta=timedelta(hours=1), timezone="UTC")
