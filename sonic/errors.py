"""User-facing errors: the CLI prints the message on one line and exits with code 2."""


class SonicError(Exception):
    """A mistake in the user's input (path, model, flag). The message names the input and the fix."""
