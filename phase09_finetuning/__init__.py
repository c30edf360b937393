"""Fine-tuning: SFT, LoRA, QLoRA."""

TITLE = "Fine-tuning: SFT, LoRA, QLoRA"
EXERCISES: tuple[str, ...] = ()
