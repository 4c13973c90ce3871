"""Errors a user can cause; the CLI prints them without a traceback."""


class UserError(Exception):
    """Bad input from the user: a wrong config key, a bad shape, a missing file."""
