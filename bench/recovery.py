"""Recovery figures on an instance of its own, through the CLI as an operator runs it: `rebuild clickhouse` rows/s
against reading the same lake tables (the baseline, same run), and backup / restore seconds against copying the
backup's bytes (`cp -r`, same run); the RTO is empty services started + restore.

    .venv/bin/python -m bench.recovery [--days 60] [--events-per-day 40000] [--repeats 2]
"""

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from resources.settings import build_resources, instance_environ, load

ROOT = Path(__file__).resolve().parent.parent


def cli(env: dict, *args: str) -> float:
    t = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "scripts.cli", *args], cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL
    )
    return time.perf_counter() - t


def lake_read_s(s) -> tuple[float, int]:
    from nautilus_assets.market_data import sinks
    from nautilus_assets.market_data.schema import FEEDS

    lake, t, rows = build_resources(s)["lake"], time.perf_counter(), 0
    for feed in FEEDS.values():
        dt = lake.table(sinks.bronze_table(feed))
        rows += dt.to_pyarrow_table().num_rows if dt else 0
    return time.perf_counter() - t, rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--days", type=int, default=60)
    ap.add_argument("--events-per-day", type=int, default=40_000)
    ap.add_argument("--repeats", type=int, default=2)
    a = ap.parse_args()
    env = instance_environ("bench-recovery", 25500)
    s, work = load(env), Path(tempfile.mkdtemp(prefix="nautilus-recovery-"))
    try:
        cli(env, "services", "start")
        s = s.reload()  # with the credentials the start-up generated
        cli(env, "history", "--days", str(a.days), "--events-per-day", str(a.events_per_day))
        read = [lake_read_s(s) for _ in range(a.repeats + 1)][1:]  # the first warms the caches
        rebuild = [cli(env, "rebuild", "clickhouse") for _ in range(a.repeats)]
        rows = read[0][1]
        r_read, r_rebuild = statistics.median(t for t, _ in read), statistics.median(rebuild)
        print(
            f"rebuild clickhouse: {rows} rows in {r_rebuild:.1f}s = {rows / r_rebuild:,.0f} rows/s; "
            f"reading the lake alone {r_read:.1f}s; ratio {r_rebuild / r_read:.1f}x"
        )
        backup = cli(env, "backup", "--to", str(work / "b"))
        t = time.perf_counter()
        shutil.copytree(work / "b", work / "copy")
        copy = time.perf_counter() - t
        size = sum(p.stat().st_size for p in (work / "b").rglob("*") if p.is_file())
        cli(env, "services", "stop")
        for lost in ("pg", "s3", "chdb"):
            shutil.rmtree(s.home / lost)
        start = cli(env, "services", "start")
        restore = cli(env, "restore", "--from", str(work / "b"))
        print(
            f"backup {backup:.1f}s, restore {restore:.1f}s of {size / 1e6:.0f} MB; cp -r of it {copy:.1f}s "
            f"(backup {backup / copy:.1f}x, restore {restore / copy:.1f}x); empty services {start:.1f}s; "
            f"RTO {start + restore:.1f}s"
        )
    finally:
        subprocess.run(
            [sys.executable, "-m", "scripts.cli", "services", "remove"], cwd=ROOT, env=env, capture_output=True
        )
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
