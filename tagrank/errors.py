"""The one exception type tagrank raises for problems a user can fix (bad config, data, paths)."""


class TagrankError(Exception):
    """A user-facing error: the message names the file or config key and what was expected.

    Entry points print it as one line and exit non-zero instead of showing a traceback.
    """
