"""The sensors' cursors, evaluated with build_sensor_context on an ephemeral instance (no services): what each
tick requests, and that the cursor it leaves makes the next tick neither repeat nor miss anything."""

import json
from datetime import date, timedelta

import dagster as dg
import pytest

from nautilus_assets.definitions import defs
from nautilus_assets.market_data.assets import BARS_KEY, CLOSED_DATES
from resources.pulsar import PulsarResource
from sensors.pulsar_ingest import SENSORS

# a broker that can report no backlog (no admin API, no metrics): the sensor falls back to its timer; never reached
BLIND = {"pulsar": PulsarResource(service_url="pulsar://127.0.0.1:1")}


@pytest.fixture
def repo():
    return defs.get_repository_def()


def tick(repo, name: str, instance, cursor=None, resources=None):
    return repo.get_sensor_def(name).evaluate_tick(
        dg.build_sensor_context(instance=instance, cursor=cursor, repository_def=repo, resources=resources)
    )


def test_the_ingest_cursor_numbers_batches_and_times_the_next_request(repo):
    with dg.instance_for_test() as inst:
        first = tick(repo, "trades_ingest_sensor", inst, resources=BLIND)
        (req,) = first.run_requests
        cur = json.loads(first.cursor)
        assert (
            cur["seq"] == 1
            and req.tags["nautilus/batch_id"].endswith("-1")
            and req.run_key == req.tags["nautilus/batch_id"]
        )
        assert req.tags["nautilus/trigger"].startswith("timer")
        soon = tick(repo, "trades_ingest_sensor", inst, cursor=first.cursor, resources=BLIND)
        assert not soon.run_requests and soon.cursor == first.cursor  # within the timer: nothing, cursor kept
        later = json.dumps({**cur, "last_request": cur["last_request"] - SENSORS.timer_s - 1})
        second = tick(repo, "trades_ingest_sensor", inst, cursor=later, resources=BLIND)
        (req2,) = second.run_requests
        assert json.loads(second.cursor)["seq"] == 2 and req2.tags["nautilus/batch_id"].endswith("-2")
        assert req2.run_key != req.run_key


def _bars(inst, closed: str = "") -> None:
    inst.report_runless_asset_event(dg.AssetMaterialization(asset_key=BARS_KEY, metadata={CLOSED_DATES: closed}))


def test_the_late_trades_cursor_starts_at_the_latest_and_asks_once_per_materialization(repo):
    yesterday, before = (date.today() - timedelta(days=d) for d in (1, 2))
    with dg.instance_for_test() as inst:
        _bars(inst, yesterday.isoformat())  # history before the sensor's first look: never replayed
        first = tick(repo, "late_trades_sensor", inst)
        assert not first.run_requests and int(first.cursor) > 0
        assert not tick(repo, "late_trades_sensor", inst, first.cursor).run_requests
        _bars(inst)  # a live batch touching today only
        _bars(inst, f"{before},{yesterday}")  # late trades for two closed days
        result = tick(repo, "late_trades_sensor", inst, first.cursor)
        assert sorted(r.partition_key for r in result.run_requests) == [before.isoformat(), yesterday.isoformat()]
        assert int(result.cursor) > int(first.cursor)
        assert not tick(repo, "late_trades_sensor", inst, result.cursor).run_requests  # asked once
        _bars(inst, yesterday.isoformat())  # later news of the same day: asked again
        (again,) = tick(repo, "late_trades_sensor", inst, result.cursor).run_requests
        assert again.partition_key == yesterday.isoformat() and again.run_key not in {
            r.run_key for r in result.run_requests
        }
