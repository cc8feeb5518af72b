"""What runs on a device, and nothing of the training side.

- `agent`: one poll of signed releases, built from `state` (the state directory), `updater` (TUF),
  `smoke` (the smoke test) and `installer` (the atomic swap); `loop` classifies frames while polling.
- `sources`: frames from a replayed recording or the mat over BLE (`ble`); `recorder`: `edgeops record`.
"""
