"""The one exception type a user can cause.

Everything that a user can get wrong (a bad path, a wrong checkpoint, an option the bundle
cannot serve, a missing optional dependency) is raised as ``FarError`` with one sentence
that says what is wrong and, where there is one, what to do. The CLI prints that sentence
and exits non-zero; library callers can catch it.
"""


class FarError(Exception):
    """A user-facing error: the message is one complete sentence."""
