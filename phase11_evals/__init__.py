"""Evals: measuring model behavior."""

TITLE = "Evals: measuring model behavior"
EXERCISES: tuple[str, ...] = ()
