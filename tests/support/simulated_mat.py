"""A bleak backend that behaves like the mat, for tests on machines without a radio.

It is plugged in through bleak's public `BleakClient(..., backend=...)` and follows
docs/ble-protocol.md: nothing streams until the start command has been written to
TX, nothing is sent until RX notifications are on, and each poll written to TX may
be answered by one notification carrying the next frame of a real recording.

The UUIDs and commands are spelled out here from the protocol document rather
than taken from edgeops' settings, so a wrong setting shows up as a silent mat.
"""

from __future__ import annotations

import asyncio
import csv
import math
import struct
from collections import Counter
from pathlib import Path
from typing import Any, ClassVar

from bleak.args import SizedBuffer
from bleak.backends.characteristic import BleakGATTCharacteristic
from bleak.backends.client import BaseBleakClient, NotifyCallback
from bleak.backends.descriptor import BleakGATTDescriptor
from bleak.backends.service import BleakGATTService, BleakGATTServiceCollection
from bleak.exc import BleakError

SERVICE_UUID = "6e400001-c352-11e5-953d-0002a5d5c51b"
TX_UUID = "6e400002-c352-11e5-953d-0002a5d5c51b"
RX_UUID = "6e400003-c352-11e5-953d-0002a5d5c51b"
START = bytes.fromhex("01d001")
POLL = bytes.fromhex("01c001")
HEADER = b"\xa5"
MTU = 23

# Garbage the mat is sent to inject, in turn; "long" is a real frame with trailing bytes (valid).
GARBAGE = ("short", "long", "nan", "kpa")
INVALID = ("short", "nan", "kpa")


def read_frames(path: Path) -> list[tuple[float, ...]]:
    """The pressures of a real recording, row by row."""
    with path.open(newline="") as handle:
        return [
            tuple(float(row[column]) for column in ("Float1", "Float2", "Float3", "Float4"))
            for row in csv.DictReader(handle)
        ]


def encode(pressures: tuple[float, ...]) -> bytes:
    return HEADER + struct.pack("<4f", *pressures)


class SimulatedMat(BaseBleakClient):
    """The mat's GATT server. Configure with `simulated_mat()`; inspect `instances` afterwards."""

    recording: ClassVar[list[tuple[float, ...]]] = []
    garbage_every: ClassVar[int] = 0  # every n-th notification is garbage; 0 for none
    skip_every: ClassVar[int] = 0  # every n-th poll goes unanswered, as on the real board; 0 for none
    only_garbage: ClassVar[bool] = False  # every notification invalid
    silent: ClassVar[bool] = False
    burst: ClassVar[int] = 1  # notifications per answered poll; more arrive within the same millisecond
    drop_after_polls: ClassVar[int | None] = None  # an unsolicited disconnect, as when the mat goes out of range
    instances: ClassVar[list[SimulatedMat]]

    def __init__(self, address: str, **kwargs: Any) -> None:
        super().__init__(address, disconnected_callback=kwargs.pop("disconnected_callback", None), **kwargs)
        self.connected = False
        self.started_at: float | None = None
        self.callback: NotifyCallback | None = None
        self.writes: list[tuple[float, str, bytes]] = []  # (loop time, characteristic uuid, data)
        self.polls = 0
        self.notifications = 0
        self.next_frame = 0
        self.garbage_sent = 0
        self.delivered_frames: list[tuple[float, ...]] = []  # valid frames whose callback ran
        self.delivered_garbage: Counter[str] = Counter()  # by kind; "long" ones are valid frames too
        self.pending: set[asyncio.Handle] = set()
        type(self).instances.append(self)

    @property
    def name(self) -> str:
        return "Seroton mat (simulated)"

    @property
    def mtu_size(self) -> int:
        return MTU

    @property
    def is_connected(self) -> bool:
        return self.connected

    async def connect(self, pair: bool, **kwargs: Any) -> None:
        await asyncio.sleep(0)
        services = BleakGATTServiceCollection()
        service = BleakGATTService(None, 1, SERVICE_UUID)
        services.add_service(service)
        for handle, uuid, properties in (
            (2, TX_UUID, ["write", "write-without-response"]),
            (4, RX_UUID, ["notify"]),
        ):
            services.add_characteristic(
                BleakGATTCharacteristic(None, handle, uuid, properties, lambda: MTU - 3, service)  # type: ignore[arg-type]
            )
        self.services = services
        self.connected = True

    async def disconnect(self) -> None:
        self._hang_up()

    def _hang_up(self) -> None:
        self.connected = False
        self.callback = None
        for handle in self.pending:
            handle.cancel()
        self.pending.clear()

    async def pair(self, *args: Any, **kwargs: Any) -> None:
        raise BleakError("the mat does not pair")

    async def unpair(self) -> None:
        raise BleakError("the mat does not pair")

    async def read_gatt_char(
        self, characteristic: BleakGATTCharacteristic, *, use_cached: bool = False, **kwargs: Any
    ) -> bytearray:
        raise BleakError(f"{characteristic.uuid} is not readable")

    async def read_gatt_descriptor(
        self, descriptor: BleakGATTDescriptor, *, use_cached: bool = False, **kwargs: Any
    ) -> bytearray:
        raise BleakError("no descriptors")

    async def write_gatt_descriptor(self, descriptor: BleakGATTDescriptor, data: SizedBuffer) -> None:
        raise BleakError("no descriptors")

    async def write_gatt_char(self, characteristic: BleakGATTCharacteristic, data: SizedBuffer, response: bool) -> None:
        self._require_connection()
        if characteristic.uuid != TX_UUID:
            raise BleakError(f"write not permitted on {characteristic.uuid}")
        payload = bytes(data)
        loop = asyncio.get_running_loop()
        self.writes.append((loop.time(), characteristic.uuid, payload))
        if payload == START:
            self.started_at = loop.time()
        elif payload == POLL:
            self.polls += 1
            if self.drop_after_polls is not None and self.polls > self.drop_after_polls:
                self._hang_up()
                if self._disconnected_callback is not None:
                    self._disconnected_callback()
                raise BleakError("Not connected")
            for _ in range(self.burst):
                self._answer(loop)
        await asyncio.sleep(0)

    def _answer(self, loop: asyncio.AbstractEventLoop) -> None:
        """Queue one notification for a poll, if the mat is streaming and someone listens."""
        if self.silent or self.started_at is None or self.callback is None:
            return
        if self.skip_every and self.polls % self.skip_every == 0:
            return
        self.notifications += 1
        if self.only_garbage or (self.garbage_every and self.notifications % self.garbage_every == 0):
            kinds = INVALID if self.only_garbage else GARBAGE
            kind = kinds[self.garbage_sent % len(kinds)]
            self.garbage_sent += 1
        else:
            kind = "frame"
        frame = self.recording[self.next_frame % len(self.recording)]
        if kind in ("frame", "long"):
            self.next_frame += 1
        payload = {
            "frame": encode(frame),
            "long": encode(frame) + b"\xde\xad\xbe\xef",
            "short": encode(frame)[:10],
            "nan": HEADER + struct.pack("<4f", frame[0], math.nan, frame[2], frame[3]),
            "kpa": encode(tuple(value / 1000 for value in frame)),
        }[kind]
        # A notification arrives a little after the poll that asked for it, never inside it.
        handle = loop.call_later(0.002, self._deliver, kind, frame, payload)
        self.pending.add(handle)

    def _deliver(self, kind: str, frame: tuple[float, ...], payload: bytes) -> None:
        if self.callback is None:
            return
        self.callback(bytearray(payload))
        if kind in ("frame", "long"):
            self.delivered_frames.append(tuple(struct.unpack("<4f", struct.pack("<4f", *frame))))
        if kind != "frame":
            self.delivered_garbage[kind] += 1

    async def start_notify(
        self, characteristic: BleakGATTCharacteristic, callback: NotifyCallback, **kwargs: Any
    ) -> None:
        self._require_connection()
        if characteristic.uuid != RX_UUID:
            raise BleakError(f"{characteristic.uuid} does not notify")
        self.callback = callback

    async def stop_notify(self, characteristic: BleakGATTCharacteristic) -> None:
        self._require_connection()
        self.callback = None

    def _require_connection(self) -> None:
        if not self.connected:
            raise BleakError("Not connected")


def simulated_mat(recording: Path, **behaviour: Any) -> type[SimulatedMat]:
    """A fresh mat class (bleak instantiates the backend itself) streaming `recording`."""
    attributes: dict[str, Any] = {"recording": read_frames(recording), "instances": [], **behaviour}
    unknown = set(behaviour) - set(vars(SimulatedMat))
    if unknown:
        raise TypeError(f"unknown mat behaviour: {', '.join(sorted(unknown))}")
    return type("Mat", (SimulatedMat,), attributes)
