"""The CLI's own failure: :class:`CommandError`, reported as one line on stderr with a non-zero exit."""

from __future__ import annotations


class CommandError(Exception):
    """A failure to report as one line."""
