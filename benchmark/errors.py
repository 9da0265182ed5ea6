"""The one exception type that the CLI turns into a single line on stderr and exit code 2, and the
argument parser that ends the same way."""
import argparse


class UsageError(Exception):
    """Bad input from the user (unknown name, value out of range, missing data): no traceback."""


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a bad flag ends like every other bad input: one line on stderr, exit code 2."""

    def error(self, message: str):
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")
