"""llm-systems-lab harness: exercise registry + CLI, profiles, results with provenance, LLM clients,
embedded model/DB locators. Phase logic never lives here."""

from lab.context import RunContext
from lab.errors import ConfigError, LabError, MissingResource, SkipExercise
from lab.exercise import Exercise, ExerciseConfig, Reference

__all__ = [
    "ConfigError",
    "Exercise",
    "ExerciseConfig",
    "LabError",
    "MissingResource",
    "Reference",
    "RunContext",
    "SkipExercise",
]
