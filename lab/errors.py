"""Errors the harness raises with a message meant for the person at the terminal."""


class LabError(Exception):
    """Base for errors the CLI prints without a traceback."""


class ConfigError(LabError):
    """A config key, value, profile or file is wrong; the message names which."""


class MissingResource(LabError):
    """A model, database or API key is not available; the message says what to set."""


class SkipExercise(LabError):
    """Raised by an exercise that cannot run here (e.g. no GPU); recorded as status=skipped."""
