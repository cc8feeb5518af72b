"""Talk to the mat over BLE (docs/ble-protocol.md): connect, start the stream, poll, decode frames.

Everything radio-specific goes through `bleak.BleakClient`; its `backend` argument
lets tests put a simulated mat where the operating system's Bluetooth stack would be.
"""

from __future__ import annotations

import asyncio
import math
import struct
import time
from collections import Counter
from collections.abc import AsyncGenerator
from contextlib import suppress
from datetime import datetime, timedelta

from bleak import BleakClient
from bleak.backends.characteristic import BleakGATTCharacteristic
from bleak.backends.client import BaseBleakClient
from bleak.exc import BleakError

from edgeops.datasets.mat import Frame
from edgeops.errors import EdgeopsError
from edgeops.settings import MatDataConfig, Settings

# The payload layout is the mat's firmware, not a knob: a header byte, then four little-endian float32.
HEADER_BYTES = 1
PRESSURES = struct.Struct("<4f")
FRAME_BYTES = HEADER_BYTES + PRESSURES.size

SHORT, NON_FINITE, OUT_OF_RANGE = "short", "non_finite", "out_of_range"


class FrameError(EdgeopsError):
    """A notification that is not a usable frame; `reason` is the counter it goes under."""

    def __init__(self, reason: str, message: str) -> None:
        self.reason = reason
        super().__init__(message)


class MatError(EdgeopsError):
    """The mat could not be reached, was lost, or sent nothing usable."""


class SilenceError(MatError):
    """No valid frame for `silence_timeout_s`: the mat is off, out of range or not streaming."""


def decode(payload: bytes, config: MatDataConfig | None = None) -> tuple[float, float, float, float]:
    """The four chamber pressures in Pa, checked as ingest checks them, so no bad frame reaches a CSV."""
    config = config or MatDataConfig()
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


def describe_bad(bad: Counter[str]) -> str:
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
        ble, config = self.settings.ble, self.settings.mat.data
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
                                f"(bad frames: {describe_bad(self.bad)}); is it powered, in range and streaming?"
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
