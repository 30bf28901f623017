"""The one exception type that the command line turns into a one-line message."""


class UserError(Exception):
    """Bad input or state the user can fix: the message says what is wrong and what to do."""
