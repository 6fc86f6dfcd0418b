"""The one exception type a user sees: the CLI prints its message on one line, no traceback."""

from __future__ import annotations

import difflib
from typing import Iterable


class BenchbdError(Exception):
    """A user-facing error: bad input, a missing dataset, a refused concurrent run."""


def did_you_mean(value: str, choices: Iterable[str]) -> str:
    """' (did you mean 'x'?)' for the closest choice, or '' when nothing is close."""
    close = difflib.get_close_matches(str(value), list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def unknown(kind: str, value: str, choices: Iterable[str]) -> BenchbdError:
    """Error for a name that is not among `choices`, listing them and the closest one."""
    choices = sorted(choices)
    return BenchbdError(f"unknown {kind} '{value}'{did_you_mean(value, choices)}; valid: {', '.join(choices)}")
