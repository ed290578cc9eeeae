"""When the ingest sensor asks for a batch (pure policy; the sensor itself is exercised end to end)."""

from sensors.pulsar_ingest import decide

KW = {"timer_s": 30, "safety_s": 120, "staleness_s": 6}


def test_pending_messages_request_a_batch():
    assert decide(10, 1, None, **KW).startswith("backlog")


def test_nothing_pending_waits_for_the_safety_interval():
    assert decide(0, 10, 50, **KW) is None
    assert decide(0, 121, 50, **KW).startswith("safety")


def test_broker_that_cannot_tell_falls_back_to_a_timer():
    assert decide(None, 10, None, **KW) is None
    assert decide(None, 31, None, **KW).startswith("timer")


def test_stale_backlog_right_after_a_batch_is_ignored():
    assert decide(5, 10, 2, **KW) is None
    assert decide(5, 10, 7, **KW).startswith("backlog")
