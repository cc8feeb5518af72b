"""Talk to the mat over BLE (docs/ble-protocol.md) and record sessions ingest reads unchanged.

Everything radio-specific goes through `bleak.BleakClient`; its `backend` argument
lets tests put a simulated mat where the operating system's Bluetooth stack would be.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import struct
import time
from collections import Counter
from collections.abc import AsyncGenerator, Iterator
from contextlib import aclosing, contextmanager, suppress
from datetime import datetime, timedelta
from pathlib import Path
from typing import IO, Any

from bleak import BleakClient
from bleak.backends.characteristic import BleakGATTCharacteristic
from bleak.backends.client import BaseBleakClient
from bleak.exc import BleakError
from botocore.exceptions import BotoCoreError, ClientError
from pydantic import BaseModel
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

from edgeops.errors import EdgeopsError
from edgeops.frames import Frame
from edgeops.settings import DatasetConfig, Settings
from edgeops.storage import put_if_absent, s3_client

# The payload layout is the mat's firmware, not a knob: a header byte, then four little-endian float32.
HEADER_BYTES = 1
PRESSURES = struct.Struct("<4f")
FRAME_BYTES = HEADER_BYTES + PRESSURES.size

SHORT, NON_FINITE, OUT_OF_RANGE = "short", "non_finite", "out_of_range"
# Not a bad payload: a valid frame arriving in the same millisecond as the previous one,
# which the CSV's millisecond timestamps cannot tell apart.
SAME_MILLISECOND = "same_millisecond"

MANIFEST_FILE = "session.json"
SESSIONS_PREFIX = "sessions"
DEFAULT_DESCRIPTION = "BLE recordings of the Seroton haptic mat made with `edgeops record`"


class FrameError(EdgeopsError):
    """A notification that is not a usable frame; `reason` is the counter it goes under."""

    def __init__(self, reason: str, message: str) -> None:
        self.reason = reason
        super().__init__(message)


class MatError(EdgeopsError):
    """The mat could not be reached, was lost, or sent nothing usable."""


class SilenceError(MatError):
    """No valid frame for `silence_timeout_s`: the mat is off, out of range or not streaming."""


class RecordError(EdgeopsError):
    """A recording that cannot start or cannot be kept."""


def decode(payload: bytes, config: DatasetConfig | None = None) -> tuple[float, float, float, float]:
    """The four chamber pressures in Pa, checked as ingest checks them, so no bad frame reaches a CSV."""
    config = config or DatasetConfig()
    if len(payload) < FRAME_BYTES:
        raise FrameError(SHORT, f"notification of {len(payload)} bytes; a frame needs at least {FRAME_BYTES}")
    values: tuple[float, float, float, float] = PRESSURES.unpack_from(payload, HEADER_BYTES)
    for value in values:
        if not math.isfinite(value):
            raise FrameError(NON_FINITE, f"frame holds {value}, not a finite pressure: {values}")
        if not config.min_pa <= value <= config.max_pa:
            hint = " (looks like kPa; the mat reports Pa)" if config.min_pa <= value * 1000 <= config.max_pa else ""
            raise FrameError(
                OUT_OF_RANGE,
                f"frame holds {value:g} Pa, outside the plausible {config.min_pa:g} to {config.max_pa:g} Pa{hint}",
            )
    return values


def _describe(bad: Counter[str]) -> str:
    return ", ".join(f"{count} {reason}" for reason, count in sorted(bad.items())) or "none"


class MatSession:
    """One connection to the mat: start the stream, subscribe, keep polling, hand over valid frames.

    Bad notifications are counted in `bad` by reason and never end the session;
    only silence, a lost connection or a failed write does.
    """

    def __init__(self, address: str, settings: Settings, backend: type[BaseBleakClient] | None = None) -> None:
        self.address = address
        self.settings = settings
        self.backend = backend
        self.bad: Counter[str] = Counter()
        self.polling_since: datetime | None = None

    async def frames(self, duration_s: float | None = None) -> AsyncGenerator[Frame, None]:
        """Valid frames as they arrive, for `duration_s` seconds of polling, or until closed when None."""
        ble, config = self.settings.ble, self.settings.dataset
        # Host time on arrival, but measured on the monotonic clock from one anchor,
        # so a clock adjustment mid-session cannot make timestamps go backwards.
        anchor_wall, anchor = datetime.now(), time.monotonic()
        arrivals: asyncio.Queue[Frame | MatError] = asyncio.Queue()
        last_valid = anchor  # monotonic time of the newest valid frame: silence is the mat's, not the consumer's

        def on_notify(_: BleakGATTCharacteristic, payload: bytearray) -> None:
            nonlocal last_valid
            now = time.monotonic()
            try:
                pressures = decode(bytes(payload), config)
            except FrameError as error:
                self.bad[error.reason] += 1
                return
            last_valid = now
            arrivals.put_nowait(Frame(anchor_wall + timedelta(seconds=now - anchor), pressures))

        def on_disconnect(_: BleakClient) -> None:
            arrivals.put_nowait(MatError(f"the mat at {self.address} disconnected"))

        client = BleakClient(self.address, on_disconnect, backend=self.backend, timeout=ble.connect_timeout_s)
        try:
            await client.connect()
        except (BleakError, TimeoutError, OSError) as error:
            raise MatError(
                f"could not connect to the mat at {self.address} ({type(error).__name__}: {error}); "
                "check that Bluetooth is available and on, and that the mat is powered and in range"
            ) from error
        try:
            tx, rx = self._characteristics(client)
            try:
                await self._write(client, tx, ble.start_command)
                await asyncio.sleep(ble.start_delay_s)
                await client.start_notify(rx, on_notify)
            except (BleakError, OSError, TimeoutError) as error:
                raise MatError(f"the mat at {self.address} did not start streaming: {error}") from error
            poller = asyncio.create_task(self._poll(client, tx, arrivals))
            try:
                started = last_valid = time.monotonic()
                self.polling_since = anchor_wall + timedelta(seconds=started - anchor)
                end = math.inf if duration_s is None else started + duration_s
                while (now := time.monotonic()) < end:
                    if arrivals.empty():
                        silent_until = last_valid + ble.silence_timeout_s
                        if now >= silent_until:
                            raise SilenceError(
                                f"no valid frame from the mat at {self.address} for {ble.silence_timeout_s:g} s "
                                f"(bad frames: {_describe(self.bad)}); is it powered, in range and streaming?"
                            )
                        try:
                            async with asyncio.timeout(min(end, silent_until) - now):
                                item = await arrivals.get()
                        except TimeoutError:
                            continue  # to the end, or to the silence check
                    else:
                        item = arrivals.get_nowait()
                    if isinstance(item, MatError):
                        raise item
                    yield item
                # Frames already received when polling ended still belong to the session.
                while not arrivals.empty():
                    if isinstance(item := arrivals.get_nowait(), Frame):
                        yield item
            finally:
                # Unsubscribe before the poller stops, so no notification lands after the session ends.
                with suppress(BleakError, OSError):
                    await client.stop_notify(rx)
                poller.cancel()
                with suppress(asyncio.CancelledError):
                    await poller
        finally:
            with suppress(BleakError, OSError, TimeoutError):
                await client.disconnect()

    def _characteristics(self, client: BleakClient) -> tuple[BleakGATTCharacteristic, BleakGATTCharacteristic]:
        ble = self.settings.ble
        found = [client.services.get_characteristic(uuid) for uuid in (ble.tx_uuid, ble.rx_uuid)]
        missing = [uuid for uuid, char in zip((ble.tx_uuid, ble.rx_uuid), found, strict=True) if char is None]
        tx, rx = found
        if missing or tx is None or rx is None:
            raise MatError(f"the device at {self.address} lacks characteristic(s) {', '.join(missing)}; is it the mat?")
        return tx, rx

    @staticmethod
    async def _write(client: BleakClient, tx: BleakGATTCharacteristic, command: str) -> None:
        # With response where the mat offers it: the acknowledgement paces us to the board.
        await client.write_gatt_char(tx, bytes.fromhex(command), response="write" in tx.properties)

    async def _poll(
        self, client: BleakClient, tx: BleakGATTCharacteristic, arrivals: asyncio.Queue[Frame | MatError]
    ) -> None:
        """Ask for frames every poll interval; a failed write ends the session through the queue."""
        ble = self.settings.ble
        try:
            while True:
                await self._write(client, tx, ble.poll_command)
                await asyncio.sleep(ble.poll_interval_s)
        except (BleakError, OSError, TimeoutError) as error:
            arrivals.put_nowait(MatError(f"lost the mat at {self.address}: poll failed ({error})"))


class RecordedFile(BaseModel):
    """One recording's entry in session.json: what ingest needs (file, label) and how it was made."""

    file: str
    label: str
    address: str
    started_at: datetime
    duration_s: float
    frames: int
    bad_frames: dict[str, int]


class RecordResult(BaseModel):
    csv: Path
    manifest: Path
    recording: RecordedFile
    uri: str = ""  # s3:// of the uploaded session.json, when uploaded


def record(
    address: str,
    label: str,
    duration_s: float,
    session_dir: Path,
    settings: Settings,
    upload: bool = False,
    backend: type[BaseBleakClient] | None = None,
) -> RecordResult:
    """Record `duration_s` seconds from the mat into `session_dir` as `<label>-<time>.csv` plus session.json.

    The CSV appears only when complete; an error or Ctrl-C leaves the directory as it was.
    """
    return asyncio.run(record_session(address, label, duration_s, session_dir, settings, upload, backend))


async def record_session(
    address: str,
    label: str,
    duration_s: float,
    session_dir: Path,
    settings: Settings,
    upload: bool = False,
    backend: type[BaseBleakClient] | None = None,
) -> RecordResult:
    """`record` for callers that already run an event loop."""
    config = settings.dataset
    if label not in config.labels:
        raise RecordError(f"unknown label '{label}' (known labels: {', '.join(config.labels)})")
    if duration_s <= 0:
        raise RecordError(f"duration must be positive, not {duration_s:g} s")
    manifest_path = session_dir / MANIFEST_FILE
    _read_manifest(manifest_path)  # a broken manifest fails now, not after the recording
    csv_path = session_dir / f"{label}-{datetime.now():%Y%m%dT%H%M%S}.csv"
    if csv_path.exists():
        raise RecordError(f"{csv_path} already exists; wait a second and record again")
    created = not session_dir.exists()
    session_dir.mkdir(parents=True, exist_ok=True)
    session = MatSession(address, settings, backend)
    try:
        frames, bad = await _capture(session, csv_path, label, duration_s, config)
    except BaseException:
        if created:
            with suppress(OSError):
                session_dir.rmdir()  # only if still empty
        raise

    entry = RecordedFile(
        file=csv_path.name,
        label=label,
        address=address,
        started_at=session.polling_since or datetime.now(),
        duration_s=duration_s,
        frames=frames,
        bad_frames=dict(sorted(bad.items())),
    )
    manifest = _read_manifest(manifest_path)  # afresh: another recording may have joined meanwhile
    manifest["recordings"].append(entry.model_dump(mode="json"))
    with _atomic_file(manifest_path) as handle:
        handle.write(json.dumps(manifest, indent=2) + "\n")
    result = RecordResult(csv=csv_path, manifest=manifest_path, recording=entry)
    if upload:
        result.uri = _upload(session_dir, manifest, settings)
    return result


async def _capture(
    session: MatSession, csv_path: Path, label: str, duration_s: float, config: DatasetConfig
) -> tuple[int, Counter[str]]:
    """Stream the session's frames into the CSV; return the rows written and the frames dropped, by reason."""
    dropped: Counter[str] = Counter()
    frames = 0
    console = Console(stderr=True)
    progress = Progress(
        TextColumn("[bold]{task.fields[label]}[/]"),
        BarColumn(),
        TextColumn("{task.fields[frames]} frames, bad: {task.fields[bad]}"),
        TimeRemainingColumn(),
        console=console,
        disable=not console.is_terminal,
    )
    with _atomic_file(csv_path) as out, progress:
        task = progress.add_task("record", total=duration_s, label=label, frames=0, bad="none")
        out.write(",".join([config.timestamp_column, *config.channel_columns]) + "\n")
        previous: datetime | None = None
        async with aclosing(session.frames(duration_s)) as stream:
            async for frame in stream:
                arrival = frame.arrival.replace(microsecond=frame.arrival.microsecond // 1000 * 1000)
                if previous is not None and arrival <= previous:  # the CSV's timestamps must strictly increase
                    dropped[SAME_MILLISECOND] += 1
                    continue
                previous = arrival
                stamp = arrival.strftime(config.timestamp_format)[:-3]  # microseconds -> milliseconds
                out.write(",".join([stamp, *map(repr, frame.pressures)]) + "\n")
                frames += 1
                progress.update(
                    task,
                    completed=(frame.arrival - (session.polling_since or frame.arrival)).total_seconds(),
                    frames=frames,
                    bad=_describe(session.bad + dropped),
                )
        bad = session.bad + dropped
        if frames == 0:
            raise MatError(
                f"no valid frame from the mat at {session.address} in {duration_s:g} s (bad frames: {_describe(bad)})"
            )
    return frames, bad


def _read_manifest(path: Path) -> dict[str, Any]:
    """The session's manifest so far, or a fresh one; a malformed one is an error, never overwritten."""
    if not path.exists():
        return {"description": DEFAULT_DESCRIPTION, "recordings": []}
    try:
        manifest = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise RecordError(f"{path}: cannot read the session manifest: {error}") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("recordings"), list):
        raise RecordError(f'{path}: not a session manifest ({{"recordings": [...]}}); fix or move it first')
    return manifest


@contextmanager
def _atomic_file(path: Path) -> Iterator[IO[str]]:
    """A text file written under a temporary name beside `path` and renamed onto it only on success."""
    temp = path.with_name(f".{path.name}.{os.getpid()}.part")
    try:
        with temp.open("x", newline="") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        temp.replace(path)
    finally:
        temp.unlink(missing_ok=True)


def _upload(session_dir: Path, manifest: dict[str, Any], settings: Settings) -> str:
    """Put the session's recordings (once each) and its manifest under sessions/<dir>/ in the raw bucket."""
    prefix = f"{SESSIONS_PREFIX}/{session_dir.name}"
    bucket = settings.raw_bucket
    uri = f"s3://{bucket}/{prefix}/{MANIFEST_FILE}"
    try:
        s3 = s3_client(settings)
        for entry in manifest["recordings"]:
            local = session_dir / str(entry.get("file", ""))
            if local.is_file() and local.parent == session_dir:
                put_if_absent(s3, bucket, f"{prefix}/{local.name}", local.read_bytes(), "text/csv")
        s3.put_object(
            Bucket=bucket,
            Key=f"{prefix}/{MANIFEST_FILE}",
            Body=(session_dir / MANIFEST_FILE).read_bytes(),
            ContentType="application/json",
        )
    except (BotoCoreError, ClientError) as error:
        raise RecordError(f"recorded into {session_dir}, but the upload to {uri} failed: {error}") from error
    return uri
