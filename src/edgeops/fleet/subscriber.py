"""MQTT to the store: the fleet service's own broker session, acknowledging each message only once it is stored.

A persistent session (clean_session off) with QoS 1 and manual acknowledgement: what devices published while the
service was away waits at the broker, and a message is acknowledged only after the transaction that stored (or
refused) it committed, so neither a broker restart nor a service crash loses one.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from datetime import UTC, datetime
from typing import Any, NamedTuple

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from edgeops.device.messages import TOPIC_ROOT
from edgeops.fleet.store import Incoming, Store
from edgeops.settings import Settings

logger = logging.getLogger(__name__)
SUBSCRIPTION = f"{TOPIC_ROOT}/+/telemetry/#"
BATCH_SIZE = 1000
BATCH_WAIT_S = 0.2


class Delivery(NamedTuple):
    incoming: Incoming
    mid: int
    qos: int


class Subscriber:
    def __init__(self, store: Store, settings: Settings, password: str) -> None:
        self.store = store
        self._queue: queue.Queue[Delivery] = queue.Queue()
        self._stop = threading.Event()
        self.connected = threading.Event()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id="edgeops-fleet-service", clean_session=False, manual_ack=True
        )
        self.client.username_pw_set(settings.fleet.mqtt_username, password)
        self.client.reconnect_delay_set(1, 10)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = lambda *_: self.connected.clear()
        self.client.on_message = self._on_message
        self.client.connect_async(settings.mqtt_host, settings.fleet.mqtt_port, keepalive=settings.fleet.keepalive_s)
        self._writer = threading.Thread(target=self._write_forever, name="fleet-writer", daemon=True)

    def start(self) -> Subscriber:
        self._writer.start()
        self.client.loop_start()
        return self

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        if reason.is_failure:
            logger.error("the broker refused the fleet service: %s", reason)
            return
        client.subscribe(SUBSCRIPTION, qos=1)
        self.connected.set()
        logger.info("subscribed to %s", SUBSCRIPTION)

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        incoming = Incoming(message.topic, bytes(message.payload), datetime.now(UTC))
        self._queue.put(Delivery(incoming, message.mid, message.qos))

    def _write_forever(self) -> None:
        while not self._stop.is_set() or not self._queue.empty():
            batch = self._next_batch()
            if not batch:
                continue
            while True:  # a database that is down holds the batch (unacknowledged) until it is back
                try:
                    self.store.ingest([delivery.incoming for delivery in batch])
                    break
                except Exception:
                    logger.exception("could not store %d message(s); retrying in 2 s", len(batch))
                    time.sleep(2)
            for delivery in batch:
                if delivery.qos > 0:
                    self.client.ack(delivery.mid, delivery.qos)

    def _next_batch(self) -> list[Delivery]:
        try:
            batch = [self._queue.get(timeout=0.5)]
        except queue.Empty:
            return []
        deadline = time.monotonic() + BATCH_WAIT_S
        while len(batch) < BATCH_SIZE:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                batch.append(self._queue.get(timeout=remaining))
            except queue.Empty:
                break
        return batch

    def backlog(self) -> int:
        return self._queue.qsize()

    def stop(self) -> None:
        """Store what has arrived, then leave (the broker keeps the session for what comes later)."""
        self._stop.set()
        self._writer.join(timeout=30)
        self.client.disconnect()
        self.client.loop_stop()
