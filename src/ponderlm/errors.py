"""User-facing errors: the CLI prints these as one line and exits non-zero."""


class PonderError(Exception):
    """A problem with the user's input (config, data, checkpoint, paths) rather than a bug."""
