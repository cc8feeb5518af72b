"""`edgeops fleet add-device | serve | simulate`: device identities, the fleet service, a fleet to run here."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from edgeops.cli.output import console, errors
from edgeops.settings import Settings

app = typer.Typer(no_args_is_help=True)


@app.command("add-device")
def add_device(
    device_id: Annotated[str, typer.Argument(help="the device's id: its broker user name and topic")],
    out: Annotated[
        Path | None, typer.Option(dir_okay=False, help="credentials file (default: <state>/fleet/devices/ID.json)")
    ] = None,
    renew: Annotated[bool, typer.Option("--renew", help="issue a new password even if the device has one")] = False,
    password_file_line: Annotated[
        bool,
        typer.Option(
            "--password-file-line",
            help="for a cluster's broker: print only the hashed password-file line for its Secret (helm/README.md)",
        ),
    ] = False,
) -> None:
    """Issue a device's broker credentials: a hashed entry for the broker, a 0600 file for the device."""
    from edgeops.fleet.credentials import add_devices, issue_for_cluster

    settings = Settings()
    if password_file_line:
        path = out or settings.device_credentials_dir / f"{device_id}.json"
        print(issue_for_cluster(settings, device_id, path))  # a hash; the password is only in the 0600 file
        errors.print(f"credentials of {device_id} in {path} (mode 0600)")
        return
    (path,) = add_devices(settings, [device_id], out, renew=renew)
    console.print(f"credentials of {device_id} in {path} (mode 0600; the password is not shown)")
    console.print(f"run the device with: edgeops agent --device-id {device_id} --broker-credentials {path}")


@app.command()
def serve() -> None:
    """Store what devices report (MQTT) and serve the API and the dashboard (HTTP) until stopped."""
    import logging

    import uvicorn

    from edgeops.errors import InputError
    from edgeops.fleet.app import create_app
    from edgeops.fleet.reference import training_histograms
    from edgeops.fleet.retrain import DriftWatch
    from edgeops.fleet.store import Store
    from edgeops.fleet.subscriber import Subscriber
    from edgeops.stack import broker

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = Settings()
    config = settings.fleet
    database = settings.state_dir.resolve() / "fleet" / "fleet.db"
    database.parent.mkdir(parents=True, exist_ok=True)
    url = config.database_url.get_secret_value() if config.database_url else f"sqlite:///{database}"
    store = Store(url, config)
    try:
        reference = training_histograms(settings.mat.session_manifest, settings.mat.data, config)
    except InputError as error:
        logging.warning("no training reference for drift: %s", "; ".join(error.problems))
        reference = {}
    subscriber = Subscriber(store, settings, broker.service_password(settings)).start()
    watch = DriftWatch(store, reference, settings).begin()
    host = config.http_host or settings.host
    console.print(f"fleet dashboard on http://{host}:{config.http_port}/ (database {store.engine.url!r})")
    try:
        app = create_app(settings, store, reference)
        uvicorn.run(app, host=host, port=config.http_port, log_level="warning")
    finally:
        watch.stop()
        subscriber.stop()
        store.close()


@app.command()
def simulate(
    devices: Annotated[int, typer.Option(min=1, max=10_000, help="simulated devices")] = 5,
    duration: Annotated[float, typer.Option(min=1, help="seconds to run")] = 60.0,
    report_interval: Annotated[
        float | None, typer.Option(min=0.1, help="seconds between reports (default: settings.fleet)")
    ] = None,
    poll_interval: Annotated[float | None, typer.Option(min=0.1, help="seconds between each device's polls")] = None,
    workers: Annotated[int, typer.Option(min=0, help="worker processes (0: settings.fleet, else one per core)")] = 0,
    prefix: Annotated[str, typer.Option(help="device ids are <prefix>-000, <prefix>-001, …")] = "sim",
    model: Annotated[str | None, typer.Option(help="the model the devices run (default: the mat track's)")] = None,
    offset: Annotated[float, typer.Option(help="added to every pressure, in Pa: a fleet whose mats drift")] = 0.0,
    speed: Annotated[float, typer.Option(min=0.01, help="replay the mats this many times faster than recorded")] = 1.0,
    kill_worker_at: Annotated[
        float | None, typer.Option(help="kill -9 a worker process this many seconds in (it is restarted)")
    ] = None,
    restart_broker_at: Annotated[float | None, typer.Option(help="restart the broker this many seconds in")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", dir_okay=False, help="also write the figures here")] = None,
) -> None:
    """Run simulated devices (the agent's own update and telemetry code) against the running stack."""
    from edgeops.fleet.simulate import simulate as run
    from edgeops.settings import check_name

    check_name("prefix", prefix)
    if model is not None:
        check_name("model", model)
    settings = Settings()
    console.print(f"{devices} simulated devices for {duration:g} s; dashboard: {settings.fleet_url}/")
    with Progress(
        TextColumn("[bold]simulating[/]"),
        BarColumn(),
        TextColumn("{task.completed:.0f}/{task.total:.0f} s"),
        TimeRemainingColumn(),
        console=console,
        transient=True,
    ) as progress:
        task = progress.add_task("run", total=duration)
        result = run(
            settings,
            devices,
            duration,
            prefix=prefix,
            model_name=model,
            workers=workers,
            report_interval_s=report_interval,
            poll_interval_s=poll_interval,
            offset_pa=offset,
            speed=speed,
            kill_worker_at=kill_worker_at,
            restart_broker_at=restart_broker_at,
            progress=lambda done, _total: progress.update(task, completed=done),
        )
    table = Table(title=f"{result.devices} devices, {result.seconds:.0f} s")
    table.add_column("figure")
    table.add_column("value", justify="right")
    rows = [
        ("messages issued by the devices", f"{result.issued:,}"),
        ("stored by the fleet service", f"{result.stored:,}"),
        ("dropped by full outboxes (counted)", f"{result.dropped:,}"),
        ("still queued on devices", f"{result.queued:,}"),
        ("lost", f"{result.lost:,}"),
        ("duplicates received and dropped", f"{result.duplicates:,}"),
        ("rejected", ", ".join(f"{k} {v}" for k, v in result.rejected.items()) or "0"),
        ("worker processes restarted", str(result.worker_restarts)),
        ("broker restarts (s away)", ", ".join(f"{s:.1f}" for s in result.broker_restarts) or "-"),
    ]
    for usage in result.usage:
        rows.append(
            (f"{usage.name}: CPU s (% of one core)", f"{usage.cpu_s:.1f} ({100 * usage.cpu_s / result.seconds:.0f} %)")
        )
        rows.append((f"{usage.name}: peak RSS", f"{usage.peak_rss_mb:.0f} MB"))
    for name, value in rows:
        table.add_row(name, value)
    console.print(table)
    if json_out is not None:
        document = {k: v for k, v in result.__dict__.items() if k != "usage"}
        document["usage"] = [{"name": u.name, "cpu_s": u.cpu_s, "peak_rss_mb": u.peak_rss_mb} for u in result.usage]
        json_out.write_text(json.dumps(document, indent=2))
    if result.lost:
        raise SystemExit(1)


@app.command("simulate-worker", hidden=True)
def simulate_worker(plan: str) -> None:
    """One worker process of `simulate` (its plan as JSON)."""
    from edgeops.fleet.simulate import Plan, run_worker

    run_worker(Plan(**json.loads(plan)), Settings())
