"""Evals: measuring model behavior."""

TITLE = "Evals: measuring model behavior"
EXERCISES: tuple[str, ...] = (
    "phase11_evals.eval_set",
    "phase11_evals.calibration",
    "phase11_evals.contamination",
    "phase11_evals.model_comparison",
)
