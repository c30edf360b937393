"""Fine-tuning: SFT, LoRA, QLoRA."""

TITLE = "Fine-tuning: SFT, LoRA, QLoRA"
EXERCISES: tuple[str, ...] = (
    "phase09_finetuning.dataset",
    "phase09_finetuning.qlora",
    "phase09_finetuning.rank_sweep",
    "phase09_finetuning.before_after",
)
