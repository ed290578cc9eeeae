"""`dagster-daemon`, whose code servers are replaced at once when one has died and otherwise every
NAUTILUS_CODE_RELOAD_SECONDS (600), instead of every 60 s. Usage: `python -m scripts.dagster_daemon run -w ...`
(`argv()` builds it; everything that starts the daemon uses that).

dagster 1.13's daemon drops its code servers and starts new ones every 60 s (`RELOAD_WORKSPACE_INTERVAL` in
`dagster/_daemon/controller.py`, not configurable; dagster-io/dagster#32693 proposes a setting). Each start imports
the definitions: 4-10 s of CPU on 2 cores, measured 2026-12-03 as ~0.2 of the machine's 2 cores during a soak at
5,000 msg/s. The same restart is how the daemon replaces a killed code server, so the controller's 5-second
thread check now looks for a dead one itself (it used to take up to 60 s)."""

from __future__ import annotations

import sys

from resources.settings import load


def server_died(registry) -> bool:
    """Whether a code server the daemon's registry started has exited."""
    from dagster._core.remote_representation.grpc_server_registry import ServerRegistryEntry

    entries = list(getattr(registry, "_active_entries", {}).values()) if registry is not None else []
    return any(isinstance(e, ServerRegistryEntry) and e.process.server_process.poll() is not None for e in entries)


def install(reload_s: float) -> None:
    """Patch the daemon controller: refresh every reload_s, and at once when a code server died."""
    from dagster._daemon import controller
    from dagster._time import get_current_timestamp

    refresh = controller.DagsterDaemonController.check_workspace_freshness

    def check_workspace_freshness(self, last_update: float) -> float:
        if not server_died(self._grpc_server_registry):
            return refresh(self, last_update)
        self._logger.warning("a code server exited: starting a new one")
        try:
            self._grpc_server_registry.clear_all_grpc_endpoints()
            self._workspace_process_context.refresh_workspace()
            return get_current_timestamp()
        except Exception:  # noqa: BLE001 - as the stock check: retried, fatal only past its tolerance
            return refresh(self, last_update)

    controller.RELOAD_WORKSPACE_INTERVAL = reload_s
    controller.DagsterDaemonController.check_workspace_freshness = check_workspace_freshness


def argv(*args: str) -> list[str]:
    """The command line that starts the daemon: `argv("run", "-w", "workspace.yaml")`."""
    return [sys.executable, "-m", "scripts.dagster_daemon", *args]


def main() -> int:
    install(load().sensors.code_reload_s)
    from dagster._daemon.cli import main as daemon_main

    sys.argv[0] = "dagster-daemon"
    return daemon_main()


if __name__ == "__main__":
    sys.exit(main())
