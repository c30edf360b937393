"""Fine-tuning: SFT, LoRA, QLoRA."""

TITLE = "Fine-tuning: SFT, LoRA, QLoRA"
EXERCISES: tuple[str, ...] = (
    "phase09_finetuning.dataset",
    "phase09_finetuning.qlora",
    "phase09_finetuning.rank_sweep",
    "phase09_finetuning.before_after",
)
# the modules later phases may import, and why; the rest are its lessons and their helpers (lab/registry.py)
PUBLIC: dict[str, str] = {
    "phase09_finetuning.sft": "train_sft, load_base, SFT_ADAPTER: the one SFT/LoRA/QLoRA trainer Phases 10 and 13 train with",
    "phase09_finetuning.dataset": "load_training_set, dataset_sha256: the Phase 9 training set DPO continues from (also lesson 9.1)",
    "phase09_finetuning.generation": "generate and the answer checks Phase 10 reuses on BASE / SFT / DPO answers",
    "phase09_finetuning.answer_loss": "answer_ids: the answer-only token mask DPO scores log-ratios on",
}
