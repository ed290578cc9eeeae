"""The Dagster UI as a user sees it: the real dagster-webserver over the test instance, opened in headless Chromium
(Debian's, installed with apt when missing; Playwright drives it). After a micro-batch and an analytics run, the
global asset lineage shows the six domain groups; the analytics product's page shows its owners, column schema,
freshness status and checks; and its upstream lineage reaches the Pulsar topic. Waits are on visible text (Playwright's
auto-retrying expectations), never sleeps. Screenshots go to test-artifacts/ui/."""

import re
import shutil
import time

import dagster as dg

from nautilus_assets.analytics import assets as analytics
from nautilus_assets.analytics import store as analytics_store
from nautilus_assets.definitions import defs
from nautilus_assets.market_data.assets import TOPICS
from nautilus_assets.market_data.schema import QUOTES, SUBSCRIPTION, TRADES
from scripts import browser, services
from tests.helpers import ROOT, counts, evaluate, product_resources, publish, wait_for

ARTIFACTS = ROOT / "test-artifacts" / "ui"
DOMAINS = {"market_data", "analytics", "microstructure", "portfolio", "risk", "ml"}
# how the asset page words a FreshnessState (dagster-webserver 1.13's status labels)
FRESHNESS_LABEL = {"PASS": "Passing", "WARN": "Warning", "FAIL": "Failed", "UNKNOWN": "Not evaluated"}
TIMEOUT_MS = 90_000  # a cold page on 2 busy cores: the first GraphQL answers can take a while


def evaluate_freshness(instance) -> None:
    """One iteration of the daemon's FreshnessDaemon (the code `dagster-daemon` runs every 30 s), in process: the
    full daemon would also start the sensors, which this test does not want. Internal API (see DAGSTER-1.13.md)."""
    from dagster._core.remote_origin import InProcessCodeLocationOrigin
    from dagster._core.test_utils import create_test_daemon_workspace_context
    from dagster._core.types.loadable_target_origin import LoadableTargetOrigin
    from dagster._core.workspace.load_target import InProcessWorkspaceLoadTarget
    from dagster._daemon.freshness import FreshnessDaemon

    origin = InProcessCodeLocationOrigin(
        loadable_target_origin=LoadableTargetOrigin(
            module_name="nautilus_assets.definitions", working_directory=str(ROOT)
        ),
        location_name="nautilus",
    )
    with create_test_daemon_workspace_context(InProcessWorkspaceLoadTarget(origin), instance) as ctx:
        list(FreshnessDaemon().run_iteration(ctx))


def seed(res, instance) -> None:
    """A micro-batch per feed through the sensors' run requests, then the analytics product. A batch may come back
    empty on a loaded machine (the first receive gives up after 300 ms idle): the sensor then asks again."""
    publish(res, 2000, seed=61)
    for feed in (TRADES, QUOTES):

        def landed():
            if res["pulsar"].backlog(feed.topic, SUBSCRIPTION):
                tick, job_name = evaluate(f"{feed.name}_ingest_sensor", instance, res)
                for rr in tick.run_requests:
                    assert (
                        defs.resolve_job_def(rr.job_name or job_name)
                        .execute_in_process(instance=instance, tags=rr.tags)
                        .success
                    )
            return counts(res, feed)[0] == 2000

        wait_for(landed, 180, every=1, what=f"the {feed.name} micro-batch")
    resources = product_resources(res)
    assert dg.materialize([analytics.indicators_1m], instance=instance, resources=resources).success


def test_ui_shows_domains_product_page_and_lineage_to_pulsar(clean, settings, instance, dagster_processes):
    from playwright.sync_api import expect

    res = clean
    t0 = time.time()
    say = lambda what: print(f"[ui] {what}: {time.time() - t0:.1f}s", flush=True)  # noqa: E731
    shutil.rmtree(ARTIFACTS, ignore_errors=True)
    ARTIFACTS.mkdir(parents=True)
    install_s = browser.ensure_chromium()
    # the webserver loads the code location meanwhile (it reads runs and events live, so order does not matter)
    dagster_processes("webserver", name="test-ui-webserver")
    seed(res, instance)
    say("seeded")
    evaluate_freshness(instance)
    state = instance.get_freshness_state_records([analytics.KEY])[analytics.KEY].freshness_state.value
    assert state in ("PASS", "WARN"), state  # materialized seconds ago; SLA warns after 2 min
    say(f"freshness evaluated ({state})")
    services.wait_port(settings.port("webserver"), "dagster-webserver", timeout=300)
    say("webserver up")
    groups = {s.group_name for s in defs.resolve_all_asset_specs()}
    assert groups >= DOMAINS and groups - DOMAINS == {"pulsar_topics"}, groups
    url = settings.webserver_url

    with browser.browser() as b:
        ctx = b.new_context(viewport={"width": 1600, "height": 1000})
        ctx.set_default_timeout(TIMEOUT_MS)
        expect.set_options(timeout=TIMEOUT_MS)
        # the "Join the Dagster community" dialog opens on loopback origins unless dismissed once
        ctx.add_init_script("window.localStorage.setItem('communityNux', '\"1\"')")
        page = ctx.new_page()
        try:
            # 1. Global asset lineage: one node per group, the six domains and the Pulsar topics
            page.goto(f"{url}/asset-groups")
            canvas = page.locator("foreignObject")
            for group in sorted(groups):
                expect(canvas.get_by_text(group, exact=True).first).to_be_visible()
            expect(canvas.get_by_text("fetching statuses")).to_have_count(0)
            say("asset graph")
            page.screenshot(path=ARTIFACTS / "asset-graph.png")

            # 2. The product's page: owners, column schema, freshness status, checks
            page.goto(f"{url}/assets/{analytics.KEY.to_user_string()}")
            field = lambda label: page.get_by_text(label, exact=True).first.locator("xpath=..")  # noqa: E731
            expect(field("Owners")).to_contain_text(analytics.PRODUCT.owners[0].removeprefix("team:"))
            expect(field("Group")).to_contain_text(analytics.PRODUCT.group)
            expect(field("Freshness policy")).to_contain_text(FRESHNESS_LABEL[state])
            expect(page.get_by_text("Fails if more than 5 minutes since last materialization")).to_be_visible()
            expect(page.get_by_text("Warns if more than 2 minutes since last materialization")).to_be_visible()
            expect(field("Latest check results")).to_contain_text("2")
            table = page.locator("table").filter(has_text="Column name")
            expect(table).to_be_visible()
            for col in analytics_store.INDICATORS.schema.columns:
                expect(table.get_by_text(col.name, exact=True).first).to_be_visible()
                expect(table).to_contain_text(col.type)
            page.screenshot(path=ARTIFACTS / "product-overview.png")  # docs/ui-product-page.png
            page.screenshot(path=ARTIFACTS / "product-overview-full.png", full_page=True)
            say("product page")

            page.get_by_role("tab", name="Checks").click()
            for spec in analytics.indicators_1m.check_specs:
                expect(page.get_by_text(spec.name, exact=True).first).to_be_visible()
            succeeded = page.get_by_text("Succeeded", exact=True)
            expect(succeeded).to_have_count(len(analytics.indicators_1m.check_specs))
            expect(page.get_by_text("Failed", exact=True)).to_have_count(0)
            page.screenshot(path=ARTIFACTS / "product-checks.png")
            say("checks")

            # 3. Its lineage, upstream at full depth, reaches the Pulsar topic
            page.get_by_role("tab", name="Lineage").click()
            page.get_by_role("button", name="Upstream").click()
            page.get_by_role("button", name="All", exact=True).click()
            for group in ("analytics", "market_data", "pulsar_topics"):
                expect(canvas.get_by_text(group, exact=True).first).to_be_visible()
            topic_group = canvas.get_by_text("pulsar_topics", exact=True).first
            # zoom out (the graph's own button) until the topic group is clear of the left edge of the canvas
            left = page.get_by_role("button", name="Nearest Neighbors").bounding_box()["x"]
            zoom_out = page.locator("button", has=page.locator("[aria-label='zoom_out']"))
            for _ in range(12):
                if topic_group.bounding_box()["x"] >= left + 24:
                    break
                before = topic_group.bounding_box()["x"]
                zoom_out.click()
                page.wait_for_function(
                    "([el, x]) => el.getBoundingClientRect().x !== x", arg=[topic_group.element_handle(), before]
                )
            for name in ("indicators_1m", "bars_1m"):
                expect(page.locator(f"[data-tooltip='{name}']")).to_be_visible()
            expect(page.locator("[data-tooltip='trades']")).to_have_count(2)  # the bronze table and the topic
            page.screenshot(path=ARTIFACTS / "product-lineage-upstream.png")
            # the leftmost "trades" (the graph flows left to right) sits in the pulsar_topics group; clicking it
            # opens that asset: the Pulsar topic
            nodes = page.locator("[data-tooltip='trades']")
            xs = [nodes.nth(i).bounding_box()["x"] for i in range(nodes.count())]
            assert min(xs) < topic_group.bounding_box()["x"] + topic_group.bounding_box()["width"] < max(xs), xs
            nodes.nth(xs.index(min(xs))).click()
            topic = TOPICS["trades"]
            expect(page).to_have_url(re.compile(rf"/assets/{topic.key.to_user_string()}(\?|$)"))
            page.get_by_role("tab", name="Overview").click()
            expect(page.get_by_text(topic.description, exact=True).first).to_be_visible()
            page.screenshot(path=ARTIFACTS / "pulsar-topic.png")
            say("lineage to the Pulsar topic")
        except Exception:
            page.screenshot(path=ARTIFACTS / "failure.png", full_page=True)
            (ARTIFACTS / "failure.txt").write_text(f"{page.url}\n\n{page.inner_text('body')}")
            raise
    print(f"[ui] chromium install {install_s:.0f}s; test {time.time() - t0:.0f}s; screenshots in {ARTIFACTS}")
