"""The one exception type that reaches users as a one-line message."""


class MedvolError(Exception):
    """A user-facing error: bad input, a missing file, an impossible configuration.

    The CLI prints ``str(error)`` on one line and exits with status 2; the message must name the
    culprit (a file, an option, a config key).
    """
