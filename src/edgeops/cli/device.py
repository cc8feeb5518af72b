"""`edgeops agent | record`: what runs beside the mat. Imports nothing of the training side."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from edgeops.cli.output import console, errors
from edgeops.settings import Dataset, Settings

if TYPE_CHECKING:
    from edgeops.datasets.mat import Frame

app = typer.Typer()

ModelOption = Annotated[str | None, typer.Option("--model", help="model name (default: the mat track's)")]
ChannelOption = Annotated[str | None, typer.Option(help="release channel (default: stable)")]


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
) -> None:
    """The edge agent: install signed releases safely, and classify frames with the installed model."""
    from edgeops.device.agent import Agent, AgentError
    from edgeops.device.loop import run

    settings = Settings()
    device = Agent(settings, state_dir, model, channel, repository, root, report=console.print, track=track)
    device.check_installed()
    if once:
        try:
            stats = device.poll()
            console.print(
                f"{stats.outcome}; {stats.requests} requests, {stats.metadata_bytes} metadata bytes, "
                f"{stats.target_bytes} target bytes, {stats.seconds:.2f} s"
            )
        except AgentError as error:
            errors.print(f"[bold red]poll failed:[/] {error}", highlight=False)
        running = device.state.running_model()
        if running is None:
            errors.print("[bold red]no verified model is installed[/]")
            raise SystemExit(1)
        model_info, role = running
        console.print(f"running {device.model_name} v{model_info.version} ({role}), sha256 {model_info.sha256}")
        raise SystemExit(0 if device.state.status.last_error is None else 2)

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
        run(device, interval or settings.agent.poll_interval_s, frames, console.print)
    except KeyboardInterrupt:
        console.print("stopped")


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

    settings = Settings()
    result = run(address, label, duration or settings.ble.record_duration_s, session, settings)
    bad = ", ".join(f"{count} {reason}" for reason, count in result.recording.bad_frames.items()) or "none"
    console.print(f"{result.recording.frames} frames → {result.csv} (dropped: {bad}); manifest {result.manifest}")
    if upload:
        from edgeops.stack.sessions import upload_session

        uri = upload_session(session, settings)
        console.print(f"uploaded; ingest with: edgeops ingest --manifest {uri}")
