"""The one exception type that the CLI turns into a single line on stderr and exit code 2."""


class UsageError(Exception):
    """Bad input from the user (unknown name, value out of range, missing data): no traceback."""
