"""Evals: measuring model behavior."""

TITLE = "Evals: measuring model behavior"
EXERCISES: tuple[str, ...] = (
    "phase11_evals.eval_set",
    "phase11_evals.calibration",
    "phase11_evals.contamination",
    "phase11_evals.model_comparison",
)
# the modules later phases may import, and why; the rest are its lessons and their helpers (lab/registry.py)
PUBLIC: dict[str, str] = {
    "phase11_evals.editor_gate": "decide, GateThresholds: one verdict -> APPROVE / REJECT / ESCALATE, the capstone Editor's gate",
    "phase11_evals.evaldata": "the rubrics, eval set and calibration set as validated objects the Editor loads",
    "phase11_evals.calibration": "judge_calibration: the check that decides whether the Editor's approval counts (also lesson 11.2)",
}
