"""`edgeops`: the local stack, the six stages, the pipeline, releases, the edge agent and the benchmarks.

One module per command group; each imports what its commands need only when they run, so that
`edgeops agent` on a device loads nothing of the training side.
"""

from __future__ import annotations

import warnings

import typer

from edgeops.cli import bench, data, demo, device, fleet, keys, pipeline, release, rollout, stack, stages
from edgeops.cli.output import errors
from edgeops.errors import EdgeopsError

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
for group in (stack, stages, demo, device, bench):  # commands at the top level
    app.add_typer(group.app)
for name, group in (
    ("pipeline", pipeline),
    ("keys", keys),
    ("release", release),
    ("data", data),
    ("fleet", fleet),
    ("rollout", rollout),
):
    app.add_typer(group.app, name=name)


def main() -> None:
    # Raised by torch's pytree from inside torchao/ExecuTorch on every graph copy: noise we cannot fix.
    warnings.filterwarnings("ignore", r"`isinstance\(treespec, LeafSpec\)` is deprecated", FutureWarning)
    try:
        app()
    except EdgeopsError as error:
        errors.print(f"[bold red]error:[/] {error}", highlight=False)
        raise SystemExit(1) from None
