"""Both device clients give one verdict on every shared attack vector (tests/support/attack_vectors.py).

The vectors are built once with the real publisher on the real stack and served step by step over HTTP at
one stable URL per model. The Python agent and the Kotlin OTA client's CLI each poll every step with a state
directory of their own; after each step both must report the same outcome, installed version and sha256, and
refusal reason, and that must be what the vector expects. `pytest -s` prints the verdict table.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import shutil
import subprocess
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest

from edgeops.device.agent import Agent, AgentError
from edgeops.device.updater import refusal_reason
from edgeops.settings import Dataset, Settings
from tests.conftest import REPO, unavailable
from tests.support.attack_vectors import ROOT_FILE, VECTOR_FILE, build_vectors

OTA_CLI = REPO / "android" / "ota-cli" / "target" / "ota-cli.jar"
BUILD_OTA_CLI = ["mvn", "-f", "android/pom.xml", "-q", "-pl", "ota-cli", "-am", "package", "-DskipTests"]
CLI_TIMEOUT_S = 300  # one poll; the client's own deadline is shorter


@dataclass(frozen=True)
class Verdict:
    """What a client said about one step, and what it has installed after it."""

    outcome: str  # installed | unchanged | refused | error (the client broke its contract)
    version: int | None
    sha256: str | None
    reason: str | None
    message: str

    def compared(self) -> tuple[object, ...]:
        return (self.outcome, self.version, self.sha256, self.reason)

    def __str__(self) -> str:
        installed = f"v{self.version} {self.sha256[:8]}" if self.version is not None and self.sha256 else "nothing"
        return f"{self.outcome} {self.reason or ''} [{installed}]".replace("  ", " ")


def expected(step: dict[str, Any]) -> Verdict:
    return Verdict(step["expect"], step["expect_version"], step["expect_sha256"], step["expect_reason"], "")


@dataclass(frozen=True)
class Vector:
    directory: Path
    body: dict[str, Any]

    @property
    def name(self) -> str:
        return str(self.body["name"])

    @property
    def model_name(self) -> str:
        return str(self.body["model_name"])

    @property
    def steps(self) -> list[dict[str, Any]]:
        return list(self.body["steps"])


class Repositories:
    """Serves one step's repository copy at a stable URL per model: `http://127.0.0.1:PORT/<model>/`."""

    def __init__(self) -> None:
        self.model_name, self.directory = "", Path("/nonexistent")
        repositories = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                prefix = f"/{repositories.model_name}/"
                path = unquote(urlsplit(self.path).path)
                root = repositories.directory.resolve()
                file = (root / path.removeprefix(prefix)).resolve()
                if not path.startswith(prefix) or not file.is_relative_to(root) or not file.is_file():
                    self.send_error(404)
                    return
                body = file.read_bytes()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                # A client that stops reading at the signed length hangs up on endless data.
                with contextlib.suppress(OSError):
                    self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def serve(self, vector: Vector, step: dict[str, Any]) -> str:
        self.model_name, self.directory = vector.model_name, vector.directory / step["repository"]
        return f"http://127.0.0.1:{self.server.server_address[1]}/{vector.model_name}/"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)


Client = Callable[[Vector, str, Path], Verdict]  # one poll: (vector, repository URL, state dir) -> verdict


def replay(vectors: list[Vector], repositories: Repositories, client: Client, state_root: Path) -> dict[str, Verdict]:
    """Every step of every vector polled in order, one state directory per vector; keyed `vector/step-N`."""
    verdicts = {}
    for vector in vectors:
        state_dir = state_root / vector.name
        if vector.body.get("device_id"):  # both clients place themselves in rollouts by this file
            state_dir.mkdir(parents=True, exist_ok=True)
            (state_dir / "device-id").write_text(vector.body["device_id"] + "\n")
        for step in vector.steps:
            url = repositories.serve(vector, step)
            verdicts[f"{vector.name}/{step['repository']}"] = client(vector, url, state_dir)
    return verdicts


def python_agent(settings: Settings) -> Client:
    """A fresh Agent per step, as a device restarted between polls would be."""

    def poll(vector: Vector, url: str, state_dir: Path) -> Verdict:
        agent = Agent(
            settings,
            state_dir=state_dir,
            model_name=vector.model_name,
            channel=vector.body["channel"],
            repository_url=url,
            trusted_root=vector.directory / ROOT_FILE,
            track=Dataset(vector.body["track"]),
        )
        try:
            stats = agent.poll()
            outcome, reason, message = (
                "installed" if stats.outcome.startswith("installed") else "unchanged",
                None,
                stats.outcome,
            )
        except AgentError as error:
            outcome, reason, message = "refused", refusal_reason(error), str(error)
        current = agent.state.installed().current
        return Verdict(
            outcome, current.version if current else None, current.sha256 if current else None, reason, message
        )

    return poll


def kotlin_cli(jar: Path) -> Client:
    def poll(vector: Vector, url: str, state_dir: Path) -> Verdict:
        command = ["java", "-jar", str(jar), "poll", "--state-dir", str(state_dir), "--repository", url]
        command += ["--root", str(vector.directory / ROOT_FILE), "--model", vector.model_name]
        command += ["--channel", vector.body["channel"], "--track", vector.body["track"], "--json"]
        done = subprocess.run(command, capture_output=True, text=True, timeout=CLI_TIMEOUT_S, check=False)
        try:
            answer = json.loads(done.stdout)
        except ValueError:
            answer = None
        # The contract: exit 0 installed/unchanged, 2 refused, each with one JSON line on stdout.
        refused = isinstance(answer, dict) and answer.get("outcome") == "refused"
        if done.returncode != (2 if refused else 0) or not isinstance(answer, dict):
            return Verdict("error", None, None, None, f"exit {done.returncode}: {done.stdout} {done.stderr}".strip())
        return Verdict(answer["outcome"], answer["version"], answer["sha256"], answer["reason"], answer["message"])

    return poll


@pytest.fixture(scope="module")
def vectors(stack_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> list[Vector]:
    built = build_vectors(stack_settings, tmp_path_factory.mktemp("vectors"))
    return [Vector(directory, json.loads((directory / VECTOR_FILE).read_text())) for directory in built]


@pytest.fixture(scope="module")
def repositories() -> Iterator[Repositories]:
    served = Repositories()
    yield served
    served.close()


@pytest.fixture(scope="module")
def python_verdicts(
    vectors: list[Vector],
    repositories: Repositories,
    stack_settings: Settings,
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, Verdict]:
    return replay(vectors, repositories, python_agent(stack_settings), tmp_path_factory.mktemp("python-devices"))


@pytest.fixture(scope="module")
def ota_cli() -> Path:
    """The Kotlin client's CLI: built with Maven when missing and Maven is here."""
    if shutil.which("java") is None:
        unavailable("no java on PATH for the Kotlin OTA client (`make jvm` installs one)")
    if not OTA_CLI.is_file():
        if shutil.which("mvn") is None:
            unavailable(f"{OTA_CLI.relative_to(REPO)} is not built and there is no mvn (`make jvm android-test`)")
        subprocess.run(BUILD_OTA_CLI, cwd=REPO, check=True)
    return OTA_CLI


def expectations_missed(vectors: list[Vector], verdicts: dict[str, Verdict]) -> list[str]:
    missed = []
    for vector in vectors:
        for step in vector.steps:
            key, wanted = f"{vector.name}/{step['repository']}", expected(step)
            if verdicts[key].compared() != wanted.compared():
                missed.append(f"{key}: expected {wanted}, got {verdicts[key]}: {verdicts[key].message}")
    return missed


def print_table(rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    print()
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


def test_the_vectors_cover_the_attacks(vectors: list[Vector]) -> None:
    reasons = {step["expect_reason"] for vector in vectors for step in vector.steps}
    assert reasons >= {
        None,
        "hash",
        "length",
        "missing",
        "rollback",
        "expired",
        "signature",
        "mix-and-match",
        "wrong-track",
        "no-release",
        "metadata",
    }
    assert all(vector.steps for vector in vectors)


def test_the_python_agent_gives_every_expected_verdict(
    vectors: list[Vector], python_verdicts: dict[str, Verdict]
) -> None:
    print_table(
        [("vector/step", "expected", "python", "message")]
        + [
            (key, str(expected(step)), str(python_verdicts[key]), python_verdicts[key].message[:100])
            for vector in vectors
            for step in vector.steps
            for key in [f"{vector.name}/{step['repository']}"]
        ]
    )
    missed = expectations_missed(vectors, python_verdicts)
    assert not missed, "\n".join(missed)


def test_the_kotlin_client_gives_the_python_agents_verdict_on_every_step(
    vectors: list[Vector],
    repositories: Repositories,
    python_verdicts: dict[str, Verdict],
    ota_cli: Path,
    tmp_path: Path,
) -> None:
    kotlin_verdicts = replay(vectors, repositories, kotlin_cli(ota_cli), tmp_path / "kotlin-devices")
    rows = [("vector/step", "python", "kotlin", "")]
    disagreements = []
    for key, python in python_verdicts.items():
        kotlin = kotlin_verdicts[key]
        same = python.compared() == kotlin.compared()
        rows.append((key, str(python), str(kotlin), "" if same else "DISAGREE"))
        if not same:
            disagreements.append(f"{key}: python {python} ({python.message}) | kotlin {kotlin} ({kotlin.message})")
    print_table(rows)
    print(f"{len(vectors)} vectors, {len(python_verdicts)} steps, {len(disagreements)} disagreements")
    missed = expectations_missed(vectors, kotlin_verdicts)
    assert not disagreements, "\n".join(disagreements)
    assert not missed, "\n".join(missed)
