"""Pulsar by service URL (locally the project's Apache Pulsar standalone, or pulsar-lite with
NAUTILUS_PULSAR_BROKER=lite; a cluster in production), plus how to read a backlog."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager

import dagster as dg
import pulsar
import requests
from pydantic import Field

_METRIC = re.compile(r"^pulsar_subscription_back_log\{(?P<labels>[^}]*)\}\s+(?P<value>\S+)", re.M)


def _short(topic: str) -> tuple[str, str]:
    """persistent://tenant/ns/name -> ('tenant/ns', 'name')"""
    path = topic.split("://", 1)[-1]
    ns, _, name = path.rpartition("/")
    return ns, name


class PulsarResource(dg.ConfigurableResource):
    service_url: str = Field(description="pulsar://host:6650")
    admin_url: str = Field("", description="Admin REST URL (Apache Pulsar); empty if the broker has none")
    metrics_url: str = Field("", description="Prometheus endpoint; used for backlog when there is no admin API")

    @contextmanager
    def client(self) -> Iterator[pulsar.Client]:
        c = pulsar.Client(
            self.service_url, operation_timeout_seconds=30, logger=pulsar.ConsoleLogger(pulsar.LoggerLevel.Warn)
        )
        try:
            yield c
        finally:
            c.close()

    def backlog(self, topic: str, subscription: str) -> int | None:
        """Messages pending on a subscription, or None when the broker cannot tell."""
        ns, name = _short(topic)
        try:
            if self.admin_url:
                r = requests.get(f"{self.admin_url}/admin/v2/persistent/{ns}/{name}/stats", timeout=5)
                if r.status_code == 404:
                    return 0
                r.raise_for_status()
                return int(r.json().get("subscriptions", {}).get(subscription, {}).get("msgBacklog", 0))
            if self.metrics_url:
                text = requests.get(self.metrics_url, timeout=5).text
                for m in _METRIC.finditer(text):
                    labels = dict(re.findall(r'(\w+)="([^"]*)"', m["labels"]))
                    if (
                        labels.get("subscription") == subscription
                        and labels.get("topic") in (name, topic)
                        and labels.get("namespace", ns) == ns
                    ):
                        return int(float(m["value"]))
                return 0
        except requests.RequestException:
            return None
        return None
