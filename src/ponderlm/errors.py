"""User-facing errors: the CLI prints these as one line and exits non-zero."""


class PonderError(Exception):
    """A problem with the user's input (config, data, checkpoint, paths) rather than a bug."""


def remote_code_refused(exc: BaseException, what: str) -> PonderError | None:
    """One line for transformers' refusal of a directory whose config asks for its own Python code (`auto_map`):
    ponderlm always passes `trust_remote_code=False`, since running code from a downloaded or handed-over model
    directory would run anything. None if `exc` is another error."""
    if "trust_remote_code" not in str(exc) and "contains custom code" not in str(exc):
        return None
    return PonderError(f"{what} needs custom Python code from its directory (auto_map in its config); ponderlm "
                       "never runs code from a model directory: use a model / tokenizer without auto_map")
