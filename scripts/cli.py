"""`nautilus`, the command line (click): thin commands over scripts/ and the domains' functions."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import click

from resources.settings import API_PORTS, Settings, SettingsError, apply, build_resources, load

from . import services
from .audit import audit as audit_group
from .provision import setup
from .up import say

ROOT = Path(__file__).resolve().parent.parent


def access_command(s: Settings, what: str) -> None:
    """Print the declaration or the SQL made from it (passwords only as SCRAM verifiers / salted hashes)."""
    from resources import access

    if what == "show":
        print(f"{'role':15} " + " ".join(f"{p:>14}" for p in access.DOMAINS))
        for r in access.ROLES:
            print(f"{r:15} " + " ".join(f"{access.access(r, p):>14}" for p in access.DOMAINS))
        return
    if what == "postgres-sql":
        statements = access.postgres_sql(s["DAGSTER_PG_USER"], access.role_passwords(s.env))
    else:
        statements = access.clickhouse_sql(access.role_passwords(s.env, "CH"))
    print("\n".join(f"{stmt};" for stmt in statements))


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 120})
@click.pass_context
def nautilus(ctx: click.Context) -> None:
    """The Nautilus platform: services, set-up, a simulated market, the run command, operations."""
    try:
        ctx.obj = apply(load())  # for the processes a command starts and the Dagster instance it opens
    except SettingsError as e:  # before anything starts, naming the variable
        raise click.ClickException(str(e)) from None


pass_settings = click.make_pass_decorator(Settings)


@nautilus.group("services")
def services_group() -> None:
    """Start, report or stop the platform's services."""


@services_group.command("start")
@pass_settings
def services_start(s: Settings) -> None:
    """Start the backends (and set them up)."""
    setup(apply(services.start(s)))


@services_group.command("status")
@pass_settings
def services_status(s: Settings) -> None:
    for k, v in services.status(s).items():
        click.echo(f"{k:28} {v}")


@services_group.command("stop")
@pass_settings
def services_stop(s: Settings) -> None:
    services.stop(s)


@services_group.command("remove")
@pass_settings
def services_remove(s: Settings) -> None:
    """Stop the services and delete the instance directory."""
    services.remove(s)


@nautilus.command("setup")
@pass_settings
def setup_command(s: Settings) -> None:
    """Create buckets, tables, topics, subscriptions, roles and the Dagster instance schema (idempotent)."""
    setup(s)


@nautilus.command()
@click.option("--rate", type=float, default=500.0, show_default=True, help="events per second (trades + quotes)")
@click.option("--duration", type=float, default=None, help="seconds (default: until stopped)")
@click.option("--seed", type=int, default=7, show_default=True)
@pass_settings
def simulate(s: Settings, rate: float, duration: float | None, seed: int) -> None:
    """Publish a live simulated market."""
    from .publisher import simulate as run

    click.echo(run(build_resources(s)["pulsar"], s.instruments, rate, duration, seed))


@nautilus.command()
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--rate", type=float, default=None, help="rows per second per topic (default: as fast as possible)")
@pass_settings
def replay(s: Settings, path: Path, rate: float | None) -> None:
    """Publish a Parquet or CSV file of historical ticks."""
    from .publisher import replay as run

    click.echo(run(build_resources(s)["pulsar"], path, rate))


@nautilus.command()
@click.option("--days", type=int, required=True)
@click.option("--events-per-day", type=int, default=40_000, show_default=True)
# checked by the simulator (choices here would load NumPy and Arrow for every command)
@click.option("--model", default="stylized", show_default=True, help="stylized | gaussian | random_walk")
@click.option(
    "--volume",
    default="small",
    show_default=True,
    help="small | realistic: a listed stock's day (100,000 trades, 1,000,000 quotes per instrument)",
)
@pass_settings
def history(s: Settings, days: int, events_per_day: int, model: str, volume: str) -> None:
    """Write N past days straight into the lake."""
    from .history import write_history

    r = build_resources(s)
    click.echo(
        write_history(
            r["lake"], s.instruments, days, events_per_day, postgres=r["postgres"], model=model, volume=volume
        )
    )


@nautilus.command("up")
@click.option("--rate", type=float, default=500.0, show_default=True)
@click.option(
    "--history-days",
    type=int,
    default=520,
    show_default=True,
    help="past days written first and backfilled through every product (risk's backtest needs 500)",
)
@click.option("--volume", default="small", show_default=True, help="the history's volume: small | realistic")
@pass_settings
def up_command(s: Settings, rate: float, history_days: int, volume: str) -> None:
    """Run the platform: services, simulator, Dagster daemon and UI, product APIs (Ctrl-C stops it all)."""
    from .up import up

    up(s, rate, history_days, volume)


def quarantine_options(f):
    for option in reversed(
        (
            click.option("--feed", type=click.Choice(["trades", "quotes"]), help="default: both"),
            click.option("--reason", default="", help="reason prefix, e.g. too_late or 'bad_value: price'"),
            click.option("--since", help="quarantined since: an ISO date/time (UTC) or an age such as 30m, 2h, 7d"),
        )
    ):
        f = option(f)
    return f


def _since(value: str | None):
    from nautilus_assets.market_data import quarantine

    try:
        return quarantine.parse_since(value) if value else None
    except ValueError as e:
        raise click.UsageError(str(e)) from None


@nautilus.group()
def quarantine() -> None:
    """List quarantined messages, or re-ingest them once the cause is fixed."""


@quarantine.command("list")
@quarantine_options
@click.option("--limit", type=int, default=50, show_default=True, help="rows shown (the count covers all)")
@pass_settings
def quarantine_list(s: Settings, feed: str | None, reason: str, since: str | None, limit: int) -> None:
    from nautilus_assets.market_data import quarantine as q

    since_ts = _since(since)
    rows = q.select(build_resources(s)["clickhouse"], feed=feed, reason=reason, since=since_ts)
    click.echo(f"{'quarantined_at':26} {'topic':14} {'message_id':18} {'replayed':10} reason")
    for r in rows[:limit]:
        click.echo(
            f"{r['quarantined_at']:%Y-%m-%d %H:%M:%S.%f} {r['topic'].rsplit('/', 1)[-1]:14} "
            f"{r['message_id']:18} {(r['replay_outcome'] or '-').split(':')[0]:10} {r['reason'][:120]}"
        )
    pending = sum(r["replay_outcome"] != q.STORED for r in rows)
    shown = f"; the first {limit} shown" if len(rows) > limit else ""
    say(f"{len(rows)} quarantined ({pending} not stored by a replay){shown}")


@quarantine.command("replay")
@quarantine_options
@click.option("--accept-late", is_flag=True, help="exempt from the lateness bound")
@pass_settings
def quarantine_replay(s: Settings, feed: str | None, reason: str, since: str | None, accept_late: bool) -> None:
    from nautilus_assets.market_data import quarantine as q

    since_ts = _since(since)
    r = build_resources(s)
    out = q.replay(
        r["pulsar"],
        r["lake"],
        r["clickhouse"],
        s.streaming.lateness_bound_s,
        s.home / "quarantine-replay.lock",
        feed=feed,
        reason=reason,
        since=since_ts,
        accept_late=accept_late,
        log=say,
    )
    say(
        f"{out['replay_id']}: {out['taken']} taken, {out['stored']} stored, {out['quarantined']} still "
        f"quarantined {out['reasons'] or ''}".rstrip()
    )
    if out["closed_dates"]:
        report_replay(out)


def report_replay(out: dict) -> None:
    """A replay outside any run, told to Dagster: the bars it recomputed as a runless materialization, naming the
    earlier days it added trades to, so the late-trades sensor re-runs their day-level products as for a live batch."""
    import dagster as dg

    from nautilus_assets.market_data.assets import BARS_KEY, CLOSED_DATES

    meta = {"replay_id": out["replay_id"], "stored": out["stored"], CLOSED_DATES: ",".join(sorted(out["closed_dates"]))}
    with dg.DagsterInstance.get() as inst:
        inst.report_runless_asset_event(dg.AssetMaterialization(asset_key=BARS_KEY, metadata=meta))
    say(f"reported to Dagster: the day-level products of {meta[CLOSED_DATES]} will be re-run")


def _recovery_done(what: str, out: dict) -> None:
    keep = ("seconds", "rows", "rows_per_s", "rewound")
    say(f"{what} done: {json.dumps({k: v for k, v in out.items() if k in keep})}")


@nautilus.command()
@click.option("--to", "dest", type=click.Path(path_type=Path), required=True, help="a new directory")
@pass_settings
def backup(s: Settings, dest: Path) -> None:
    """Copy PostgreSQL, the lake and ClickHouse into a new directory."""
    from . import backup as b

    _recovery_done("backup", b.backup(s, dest, log=say))


@nautilus.command()
@click.option("--from", "src", type=click.Path(exists=True, file_okay=False, path_type=Path), required=True)
@pass_settings
def restore(s: Settings, src: Path) -> None:
    """Put a backup back (services up, `nautilus up` stopped), then re-ingest what Pulsar still holds since it."""
    from . import backup as b

    _recovery_done("restore", b.restore(s, src, log=say))


@nautilus.command()
@click.argument("what", type=click.Choice(["clickhouse"]))
@pass_settings
def rebuild(s: Settings, what: str) -> None:
    """Rebuild the market-data ClickHouse tables from the lake."""
    from . import backup as b

    _recovery_done("rebuild", b.rebuild_clickhouse(s, log=say))


URL_PASSWORD = re.compile(r"(://[^:/@]+:)[^@]+@")


@nautilus.command("env")
@pass_settings
def env_command(s: Settings) -> None:
    """Print the resolved environment (secrets masked)."""
    for k, v in sorted(s.env.items()):
        secret = any(w in k for w in ("SECRET", "PASSWORD", "TOKEN")) and v
        click.echo(f"{k}=" + ("***" if secret else URL_PASSWORD.sub(r"\1***@", v)))


@nautilus.command()
@click.option("--product", multiple=True, type=click.Choice(list(API_PORTS)), help="default: every product")
def api(product: tuple[str, ...]) -> None:
    """Serve the data products' read APIs (each on its own port)."""
    from nautilus_assets.api.serve import main as api_main

    api_main([f"--product={p}" for p in product])


@nautilus.command()
@click.argument("what", type=click.Choice(["show", "postgres-sql", "clickhouse-sql"]))
@pass_settings
def access(s: Settings, what: str) -> None:
    """Who may read which product (show), and the access-control SQL made from it (postgres-sql: what `setup`
    applies; clickhouse-sql: for a production server)."""
    access_command(s, what)


@nautilus.group()
def contracts() -> None:
    """The data products' contracts (Open Data Contract Standard v3, contracts/*.odcs.yaml)."""


@contracts.command("export")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None, help="default: contracts/")
@click.option("--check", is_flag=True, help="write nothing; fail when the committed contracts differ")
def contracts_export(out: Path | None, check: bool) -> None:
    """Generate every product's contract from the code location, validated against the ODCS JSON schema."""
    from nautilus_assets import contracts as c
    from nautilus_assets.definitions import defs

    out = out or c.CONTRACTS_DIR
    if not check:
        for path in c.export(defs, out):
            click.echo(f"wrote {path}")
        return
    if diff := c.diff(defs, out):
        raise click.ClickException("the contracts differ from the code location:\n" + diff)
    click.echo(f"{out}: every contract matches the code location")


nautilus.add_command(audit_group)


def main(argv: list[str] | None = None) -> None:
    """The console script; `main([...])` runs one command in this process (its errors raise)."""
    if argv is not None:
        nautilus.main(args=argv, prog_name="nautilus", standalone_mode=False)
        return
    try:
        code = nautilus.main(prog_name="nautilus", standalone_mode=False)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except click.Abort:
        sys.exit(130)
    except SettingsError as e:  # a setting a command needed and did not find, named: no traceback
        sys.exit(f"nautilus: {e}")
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
