"""`edgeops agent | record`: what runs beside the mat. Imports nothing of the training side."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from edgeops.cli.output import console, errors
from edgeops.errors import InputError
from edgeops.settings import Dataset, Settings, check_name

if TYPE_CHECKING:
    from edgeops.datasets.mat import Frame
    from edgeops.device.agent import Agent
    from edgeops.device.telemetry import AgentReporter, BrokerCredentials

app = typer.Typer()


def valid_name(param: typer.CallbackParam, value: str | None) -> str | None:
    """Typer callback of every option naming a model or a channel: they become S3 keys and directory names,
    so a malformed one (`""`, `a/b`, `../x`) is refused while parsing, before a command does anything."""
    if value is None:
        return None
    try:
        return check_name(param.name or "name", value)
    except InputError as error:
        raise typer.BadParameter("; ".join(error.problems)) from None


ModelOption = Annotated[
    str | None, typer.Option("--model", help="model name (default: the mat track's)", callback=valid_name)
]
ChannelOption = Annotated[str | None, typer.Option(help="release channel (default: stable)", callback=valid_name)]


@app.command()
def agent(
    source: Annotated[
        str | None, typer.Option(help="frames to classify: replay:PATH (CSV at its recorded pace) or ble:ADDRESS")
    ] = None,
    interval: Annotated[float | None, typer.Option(help="seconds between polls")] = None,
    once: Annotated[
        bool, typer.Option("--once", help="one poll, then exit 0 only if a verified model is installed")
    ] = False,
    state_dir: Annotated[Path | None, typer.Option(file_okay=False, help="everything the device keeps")] = None,
    model: ModelOption = None,
    channel: ChannelOption = None,
    root: Annotated[Path | None, typer.Option(dir_okay=False, help="trusted root.json for a new device")] = None,
    repository: Annotated[str | None, typer.Option(help="base URL of the model's releases")] = None,
    speed: Annotated[float, typer.Option(help="replay this many times faster than recorded")] = 1.0,
    repeat: Annotated[bool, typer.Option("--repeat", help="start the source again when it ends")] = False,
    track: Annotated[
        Dataset | None,
        typer.Option(help="the data this device feeds (default: the track whose model --model names, else mat)"),
    ] = None,
    device_id: Annotated[
        str | None,
        typer.Option(help="report to the fleet as this device (its credentials from `edgeops fleet add-device`)"),
    ] = None,
    broker_credentials: Annotated[
        Path | None,
        typer.Option(dir_okay=False, help="the device's broker credentials (default: <state>/fleet/devices/ID.json)"),
    ] = None,
) -> None:
    """The edge agent: install signed releases safely, classify frames with the installed model, report to the fleet."""
    from edgeops.device.state import StateDirBusyError, StateLock

    settings = Settings()
    state_dir = state_dir or settings.agent.state_dir
    try:  # before anything else touches the directory; held until this process ends, however it ends
        lock = StateLock(state_dir)
    except StateDirBusyError as error:
        errors.print(f"[bold red]error:[/] {error}", highlight=False)
        raise SystemExit(1) from None
    credentials = None
    if device_id is not None:
        from edgeops.device.telemetry import BrokerCredentials

        try:
            credentials = BrokerCredentials.load(
                broker_credentials or settings.device_credentials_dir / f"{check_name('device id', device_id)}.json"
            )
        except InputError as error:
            errors.print(f"[bold red]error:[/] {'; '.join(error.problems)}", highlight=False)
            raise SystemExit(1) from None
        if credentials.device_id != device_id:
            errors.print(f"[bold red]error:[/] those credentials are {credentials.device_id!r}'s, not {device_id!r}'s")
            raise SystemExit(1)
    with lock:
        _agent(
            settings,
            state_dir,
            source,
            interval,
            once,
            model,
            channel,
            root,
            repository,
            speed,
            repeat,
            track,
            credentials,
        )


def _agent(
    settings: Settings,
    state_dir: Path,
    source: str | None,
    interval: float | None,
    once: bool,
    model: str | None,
    channel: str | None,
    root: Path | None,
    repository: str | None,
    speed: float,
    repeat: bool,
    track: Dataset | None,
    credentials: BrokerCredentials | None,
) -> None:
    from edgeops.device.agent import Agent
    from edgeops.device.telemetry import AgentReporter, Telemetry

    device = Agent(
        settings,
        state_dir,
        model,
        channel,
        repository,
        root,
        report=report,
        track=track,
        device_id=credentials.device_id if credentials else None,
    )
    device.check_installed()
    reporter = None
    if credentials is not None:
        chambers = settings.mat.data.channel_columns if device.track == Dataset.mat else []
        reporter = AgentReporter(device, Telemetry(credentials, state_dir, settings.fleet).start(), chambers)
        console.print(f"reporting as {credentials.device_id} to mqtt://{credentials.host}:{credentials.port}")
    try:
        _work(settings, device, reporter, source, interval, once, speed, repeat)
    finally:
        if reporter is not None:
            drained = reporter.telemetry.drain(settings.fleet.drain_timeout_s)
            queued = reporter.telemetry.outbox.counts()[0]
            reporter.telemetry.close()
            if not drained:
                console.print(f"{queued} telemetry message(s) stay queued on disk; they are sent on the next start")


def _work(
    settings: Settings,
    device: Agent,
    reporter: AgentReporter | None,
    source: str | None,
    interval: float | None,
    once: bool,
    speed: float,
    repeat: bool,
) -> None:
    from edgeops.device.agent import AgentError
    from edgeops.device.loop import run

    if once:
        failed = False
        try:
            if reporter is not None:
                reporter.poll()
            else:
                device.poll()
            stats = device.state.status.last_poll
            if stats is not None:
                console.print(
                    f"{stats.outcome}; {stats.requests} requests, {stats.metadata_bytes} metadata bytes, "
                    f"{stats.target_bytes} target bytes, {stats.seconds:.2f} s"
                )
        except AgentError as error:  # any Exception of a poll arrives as one, recorded in status.json
            failed = True
            errors.print(f"[bold red]poll failed:[/] {error}", highlight=False)
        if reporter is not None:
            reporter.report()
        running = device.state.running_model()
        if running is None:
            errors.print("[bold red]no verified model is installed[/]")
            raise SystemExit(1)
        model_info, role = running
        console.print(f"running {device.model_name} v{model_info.version} ({role}), sha256 {model_info.sha256}")
        raise SystemExit(2 if failed else 0)

    frames = None
    if source:
        from edgeops.device.sources import open_source

        def repeated(spec: str) -> Iterator[Frame]:
            while True:
                yield from open_source(spec, settings, speed=speed)

        frames = repeated(source) if repeat else open_source(source, settings, speed=speed)
    console.print(
        f"polling {device.repository_url} every {interval or settings.agent.poll_interval_s:g} s; Ctrl-C stops"
    )
    try:
        run(device, interval or settings.agent.poll_interval_s, frames, report, reporter=reporter)
    except KeyboardInterrupt:
        console.print("stopped")


def report(message: str) -> None:
    """The agent's lines, printed as they are: "[agent] …" is not rich markup."""
    console.print(message, markup=False)


@app.command()
def record(
    address: Annotated[str, typer.Option(help="the mat's Bluetooth address (a device UUID on macOS)")],
    label: Annotated[str, typer.Option(help="what is on the mat, one of the dataset's labels")],
    session: Annotated[Path, typer.Option(file_okay=False, help="session directory for the CSV and session.json")],
    duration: Annotated[float | None, typer.Option(help="seconds to record (default: settings.ble)")] = None,
    upload: Annotated[bool, typer.Option(help="also upload the session to the raw bucket")] = False,
) -> None:
    """Record from the mat over BLE into a session directory, in the CSV format ingest reads."""
    from edgeops.device.recorder import record as run

    if upload:  # the directory's name becomes the session's S3 prefix: refuse a bad one before recording
        from edgeops.stack.sessions import session_name

        try:
            session_name(session)
        except InputError as error:
            raise typer.BadParameter("; ".join(error.problems), param_hint="'--session'") from None
    settings = Settings()
    result = run(address, label, duration or settings.ble.record_duration_s, session, settings)
    bad = ", ".join(f"{count} {reason}" for reason, count in result.recording.bad_frames.items()) or "none"
    console.print(f"{result.recording.frames} frames → {result.csv} (dropped: {bad}); manifest {result.manifest}")
    if upload:
        from edgeops.stack.sessions import upload_session

        uri = upload_session(session, settings)
        console.print(f"uploaded; ingest with: edgeops ingest --manifest {uri}")
