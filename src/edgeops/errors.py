"""Errors a user can act on. The CLI prints their message and exits non-zero, no traceback."""


class EdgeopsError(Exception):
    pass


class InputError(EdgeopsError):
    """Bad input data: every problem found, each naming file, row and column."""

    MAX_SHOWN = 20

    def __init__(self, problems: list[str]):
        self.problems = problems
        shown = problems[: self.MAX_SHOWN]
        more = len(problems) - len(shown)
        lines = [f"{len(problems)} problem(s) in the input:", *(f"  - {p}" for p in shown)]
        if more:
            lines.append(f"  … and {more} more")
        super().__init__("\n".join(lines))


class VerificationError(EdgeopsError):
    """The artifact is not what export produced, or does not load as expected."""


class GateError(EdgeopsError):
    """A quality gate failed; nothing may be promoted."""


class PromotionError(EdgeopsError):
    """Promotion could not complete; the previous release stays live."""
