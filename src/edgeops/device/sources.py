"""Where an edge agent gets its frames: a replayed recording or the mat itself over BLE.

Both give the same plain iterator of `Frame`s, so the agent's loop is the same
in a test, in a demo without hardware and beside a real mat.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import Generator
from contextlib import suppress
from pathlib import Path
from typing import TYPE_CHECKING

from edgeops.datasets.mat import Frame, read_recording
from edgeops.errors import EdgeopsError, InputError
from edgeops.settings import Settings

if TYPE_CHECKING:
    from bleak.backends.client import BaseBleakClient

REPLAY, BLE = "replay", "ble"
FORMS = f"'{REPLAY}:PATH' (a recording CSV) or '{BLE}:ADDRESS' (the mat over Bluetooth)"


class SourceError(EdgeopsError):
    """A frame source spec that names no known kind of source."""


def open_source(
    spec: str, settings: Settings, *, speed: float = 1.0, backend: type[BaseBleakClient] | None = None
) -> Generator[Frame, None, None]:
    """Frames from `replay:PATH` (paced as recorded, `speed` times faster) or `ble:ADDRESS`.

    The spec is checked, and a replayed file validated, before the first frame is asked for,
    so a bad spec fails where it is given. `backend` replaces bleak's platform backend (tests).
    """
    scheme, _, target = spec.partition(":")
    if not target or scheme not in (REPLAY, BLE):
        raise SourceError(f"unknown frame source '{spec}'; use {FORMS}")
    if scheme == REPLAY:
        if speed <= 0:
            raise SourceError(f"replay speed must be positive, not {speed:g}")
        return _replay(Path(target), settings, speed)
    return _ble(target, settings, backend)


def _replay(path: Path, settings: Settings, speed: float) -> Generator[Frame, None, None]:
    config = settings.mat.data
    if not path.is_file():
        raise InputError([f"{path}: recording not found"])
    # Ingest's reader validates the whole file, so a bad file fails with ingest's messages.
    recording = read_recording(path, path.stem, config)
    frames = [Frame(a, tuple(p)) for a, p in zip(recording.arrivals, recording.pressures.tolist(), strict=True)]
    return _paced(frames, speed)


def _paced(frames: list[Frame], speed: float) -> Generator[Frame, None, None]:
    """Yield each frame when its recorded offset from the first, divided by speed, has passed."""
    start = time.monotonic()
    first = frames[0].arrival
    for frame in frames:
        delay = start + (frame.arrival - first).total_seconds() / speed - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        yield frame


def _ble(address: str, settings: Settings, backend: type[BaseBleakClient] | None) -> Generator[Frame, None, None]:
    """Run the BLE session on its own event loop in a thread and hand frames over a queue.

    Closing the iterator cancels the session, which unsubscribes and disconnects
    before the thread ends, so nothing is left talking to the mat.
    """
    from edgeops.device.ble import MatSession  # bleak is only needed for live sources

    def frames() -> Generator[Frame, None, None]:
        arrivals: queue.Queue[Frame | BaseException | None] = queue.Queue()
        loop = asyncio.new_event_loop()

        async def pump() -> None:
            try:
                async for frame in MatSession(address, settings, backend).frames():
                    arrivals.put(frame)
            except Exception as error:
                arrivals.put(error)
            finally:
                arrivals.put(None)

        task = loop.create_task(pump())

        def run() -> None:
            with suppress(asyncio.CancelledError):
                loop.run_until_complete(task)
            loop.run_until_complete(loop.shutdown_asyncgens())

        thread = threading.Thread(target=run, name=f"ble-source-{address}", daemon=True)
        thread.start()
        try:
            while (item := arrivals.get()) is not None:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            loop.call_soon_threadsafe(task.cancel)
            thread.join()
            loop.close()

    return frames()
