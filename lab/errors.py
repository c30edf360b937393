"""Errors the harness raises with a message meant for the person at the terminal."""


class LabError(Exception):
    """Base for errors the CLI prints without a traceback."""


class ConfigError(LabError):
    """A config key, value, profile or file is wrong; the message names which."""


class MissingResource(LabError):
    """A model, database or API key is not available; the message says what to set."""


class MissingArtifact(MissingResource):
    """A trained artifact is not in the store; the message names it and the command that builds it."""


class UnusableArtifact(LabError):
    """A stored artifact carries a flag its loader refuses (e.g. a training run that changed nothing)."""


class SkipExercise(LabError):
    """Raised by an exercise that cannot run here (e.g. no GPU); recorded as status=skipped."""
