"""Recording committed batches off the commit path: their Delta check reads and Dagster events run on one background
thread while the next batch is received and committed (their ClickHouse check reads: ingest.Stream's inspector).

A batch is acknowledged before it is recorded (both sinks hold it), so recording later changes no data; what a
kill between the two loses is the record of at most `max_pending` batches, never a row. When recording falls
behind, the thread takes every waiting batch at once (one Delta read for their checks), and the committer
blocks once `max_pending` batches wait: the records never lag without bound."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable


class Recorder:
    def __init__(self, record: Callable[[list], None], max_pending: int = 8):
        self._record, self._q = record, queue.Queue(max_pending)
        self.error: BaseException | None = None
        self.recorded = 0
        self._thread = threading.Thread(target=self._run, name="batch-recorder", daemon=True)
        self._thread.start()

    def submit(self, item) -> None:
        """Queue a committed batch; raises the recording thread's error, if it failed, in the committer."""
        if self.error is not None:
            raise RuntimeError("recording a committed batch failed") from self.error
        self._q.put(item)

    def _run(self) -> None:
        while True:
            items = [self._q.get()]
            while True:
                try:
                    items.append(self._q.get_nowait())
                except queue.Empty:
                    break
            stop = items[-1] is None
            items = [i for i in items if i is not None]
            try:
                if items and self.error is None:
                    self._record(items)
                    self.recorded += len(items)
            except BaseException as e:  # noqa: BLE001 - handed to the committer, which fails the run
                self.error = e
            if stop:
                return

    def close(self, raise_error: bool = True) -> None:
        """Record what is waiting, then stop; raises the recording thread's error, if any (and raise_error)."""
        self._q.put(None)
        self._thread.join()
        if self.error is not None and raise_error:
            raise RuntimeError("recording a committed batch failed") from self.error
