"""Answer-token loss on held-out reference answers: what a fine-tune changed, on text it never saw.

Generated answers from a small model are hard to score (a keyword count rewards echoing the
question), but the loss of a *reference* answer is not: the mean negative log-likelihood the model
assigns to each token of a held-out expert answer, given its question. Lower after SFT means the
model now expects the domain's answers; it is the quantity SFT optimises, measured on rows it did
not train on, per row so that a mean cannot hide where it got worse. Phase 10 reuses
``answer_ids`` to measure how far DPO moved a policy on fixed text.
"""

from __future__ import annotations


def answer_ids(tok, prompt: list[dict], completion: list[dict], max_answer_tokens: int | None = None):
    """(token ids of chat-formatted prompt + answer, number of prompt tokens): the answer is every
    token after the prompt's generation header, cut to ``max_answer_tokens``."""
    head = tok.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
    full = tok.apply_chat_template(prompt + completion, tokenize=True, return_dict=True)["input_ids"]
    if full[: len(head)] != head:
        raise ValueError("the chat template renders the prompt differently with and without the answer")
    end = len(full) if max_answer_tokens is None else len(head) + max_answer_tokens
    return full[:end], len(head)


def answer_losses(model, tok, rows: list[dict], max_answer_tokens: int | None = None) -> list[float]:
    """Per row {"prompt": [...], "completion": [...]}: mean NLL (nats/token) of the answer tokens."""
    import torch  # noqa: PLC0415 (heavy: torch loads on first use)
    import torch.nn.functional as F  # noqa: PLC0415 (heavy: torch loads on first use)

    model.eval()
    losses = []
    with torch.inference_mode():
        for row in rows:
            ids, n_prompt = answer_ids(tok, row["prompt"], row["completion"], max_answer_tokens)
            x = torch.tensor([ids], device=model.device)
            logits = model(input_ids=x).logits[0, n_prompt - 1 : -1].float()
            losses.append(F.cross_entropy(logits, x[0, n_prompt:]).item())
    return losses
