"""The agent at work: classify frames with the installed model while polling for releases in the background."""

from __future__ import annotations

import json
import threading
from collections import deque
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from edgeops.device.agent import Agent, AgentError
from edgeops.device.state import PREDICTIONS_FILE, Report, now

if TYPE_CHECKING:
    import torch

    from edgeops.datasets.mat import Frame
    from edgeops.device.telemetry import AgentReporter
    from edgeops.runtime import Program


class FrameWindow:
    """The model's input: the newest `length` frames, oldest first (input layout [batch, frame, chamber]).

    Apart from the model so that the Android app's Window can be checked against it (tests/device/vectors.py).
    """

    def __init__(self, length: int, recent: Iterable[tuple[float, ...]] = ()) -> None:
        self.frames: deque[tuple[float, ...]] = deque(recent, maxlen=length)

    def push(self, pressures: tuple[float, ...]) -> list[list[tuple[float, ...]]] | None:
        """Add a frame; the model input once `length` frames are in, else None."""
        self.frames.append(pressures)
        if len(self.frames) < (self.frames.maxlen or 0):
            return None
        return [list(self.frames)]


def label_for(logits: torch.Tensor, labels: list[str]) -> str:
    """The label of the highest logit (the first one on a tie, as torch.argmax picks)."""
    return labels[int(logits.argmax())]


class Predictor:
    """Runs the installed model on a sliding window of frames."""

    def __init__(self, agent: Agent, recent: Iterable[tuple[float, ...]] = ()) -> None:
        from edgeops.runtime import Program

        running = agent.state.running_model()
        if running is None:
            raise AgentError("no verified model is installed")
        self.model, self.role = running
        self.program: Program = Program(agent.state.model_path(self.model))
        # Frames seen under the previous model carry over: a new model classifies from its first frame.
        self.window = FrameWindow(self.model.input_shape[1], recent)

    def feed(self, frame: Frame) -> dict[str, Any] | None:
        import torch

        window = self.window.push(frame.pressures)
        if window is None:
            return None
        logits = self.program(torch.tensor(window, dtype=torch.float32))[0]
        latency_ms = self.program.last_ms
        return {
            "at": now(),
            "time": frame.arrival.isoformat(timespec="milliseconds"),
            "version": self.model.version,
            "label": label_for(logits, self.model.labels),
            "logits": [round(float(v), 4) for v in logits],
            "latency_ms": round(latency_ms, 4),
        }


def run(
    agent: Agent,
    interval_s: float,
    frames: Iterator[Frame] | None,
    report: Report,
    stop: threading.Event | None = None,
    reporter: AgentReporter | None = None,
) -> None:
    """Poll every `interval_s` in the background while classifying frames (if any) in the foreground;
    with a `reporter`, also report to the fleet every `reporter.telemetry.config.report_interval_s`."""
    stop = stop or threading.Event()
    changed = threading.Event()
    poll = reporter.poll if reporter else agent.poll

    def poll_forever() -> None:
        """Every cycle, whatever it raises (an Exception: KeyboardInterrupt and SystemExit still stop it)."""
        try:
            while not stop.is_set():
                try:
                    before = agent.state.installed().current
                    poll()
                    if agent.state.installed().current != before:
                        last = agent.state.status.last_poll
                        report(f"[agent] {last.outcome} in {last.seconds:.2f} s" if last else "[agent] installed")
                        changed.set()
                except AgentError as error:  # recorded in status.json by poll()
                    report(f"[agent] poll failed, keeping the running model; retrying in {interval_s:g} s: {error}")
                except Exception as error:  # outside poll(), e.g. an unreadable installed.json
                    message = agent.record_failure(error)
                    report(f"[agent] poll failed, keeping the running model; retrying in {interval_s:g} s: {message}")
                stop.wait(interval_s)
        finally:
            stop.set()  # a poller that is gone ends the agent rather than leave it running without updates

    def report_forever(reporter: AgentReporter) -> None:
        every = reporter.telemetry.config.report_interval_s
        while not stop.wait(every):
            try:
                reporter.report()
            except Exception as error:  # a full disk must not stop the agent: the model keeps running
                report(f"[agent] could not queue telemetry: {error}")

    poller = threading.Thread(target=poll_forever, name="edgeops-poller", daemon=True)
    poller.start()
    if reporter is not None:
        threading.Thread(target=report_forever, args=(reporter,), name="edgeops-reporter", daemon=True).start()
    try:
        if frames is None:
            while not stop.wait(3600):
                pass
            return
        predictor: Predictor | None = None
        with (agent.state.root / PREDICTIONS_FILE).open("a") as log:
            for frame in frames:
                if stop.is_set():
                    break
                if predictor is None or changed.is_set():
                    changed.clear()
                    if agent.state.running_model() is None:
                        continue  # nothing verified to run yet; the poller is working on it
                    predictor = Predictor(agent, predictor.window.frames if predictor else ())
                    report(f"[agent] running v{predictor.model.version} ({predictor.role})")
                prediction = predictor.feed(frame)
                if reporter is not None:
                    reporter.observe(
                        frame.pressures,
                        prediction["label"] if prediction else None,
                        prediction["latency_ms"] / 1000 if prediction else None,
                        predictor.model.version,
                    )
                if prediction is not None:
                    log.write(json.dumps(prediction) + "\n")
                    log.flush()
                    report(f"{prediction['time']}  v{prediction['version']}  {prediction['label']}")
    finally:
        stop.set()
        poller.join(timeout=agent.config.cycle_deadline_s + agent.config.socket_timeout_s)
