"""10.1: the Bradley-Terry loss on known numbers, accuracy/margin, HH-RLHF parsing, the exercise end to end."""

import json
import math
import os

import pytest

from lab.errors import ConfigError
from lab.registry import resolve
from lab.runner import execute
from phase10_alignment.data import LOCAL_FILE, load_pairs, parse_dialogue, to_pair
from phase10_alignment.reward_model import EXERCISE, bradley_terry_loss, preference_stats, surviving_update_share

torch = pytest.importorskip("torch")


def test_bradley_terry_loss_on_known_numbers():
    # equal rewards: a coin, log 2
    assert bradley_terry_loss(torch.tensor([0.0]), torch.tensor([0.0])).item() == pytest.approx(math.log(2))
    # margin +1: -log σ(1) = log(1 + e^-1) = 0.31326; margin -1: log(1 + e) = 1.31326
    assert bradley_terry_loss(torch.tensor([1.0]), torch.tensor([0.0])).item() == pytest.approx(0.313262, abs=1e-6)
    assert bradley_terry_loss(torch.tensor([0.0]), torch.tensor([1.0])).item() == pytest.approx(1.313262, abs=1e-6)
    # the mean over a batch, and only the difference matters
    batch = bradley_terry_loss(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])).item()
    assert batch == pytest.approx((0.313262 + 1.313262) / 2, abs=1e-6)
    shifted = bradley_terry_loss(torch.tensor([101.0, 100.0]), torch.tensor([100.0, 101.0])).item()
    assert shifted == pytest.approx(batch, abs=1e-5)
    # a huge margin stays finite (logsigmoid, not log(sigmoid))
    assert bradley_terry_loss(torch.tensor([0.0]), torch.tensor([200.0])).item() == pytest.approx(200.0)


def test_bradley_terry_gradient_pushes_chosen_up():
    r_c = torch.tensor([0.0], requires_grad=True)
    r_r = torch.tensor([0.0], requires_grad=True)
    bradley_terry_loss(r_c, r_r).backward()
    assert r_c.grad.item() == pytest.approx(-0.5) and r_r.grad.item() == pytest.approx(0.5)


def test_preference_stats_accuracy_and_margin():
    acc, margin = preference_stats(torch.tensor([2.0, 0.0, 1.0, 3.0]), torch.tensor([1.0, 1.0, 1.0, 0.0]))
    assert acc == pytest.approx((1 + 0 + 0.5 + 1) / 4)  # a tie counts half
    assert margin == pytest.approx((1 - 1 + 0 + 3) / 4)


def test_parse_dialogue_and_pair_split():
    row = {
        "chosen": "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: how?\n\nAssistant: like this",
        "rejected": "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: how?\n\nAssistant: no",
    }
    pair = to_pair(row, "row 7")
    assert [m["role"] for m in pair.prompt] == ["user", "assistant", "user"]
    assert pair.chosen == "like this" and pair.rejected == "no"
    dpo = pair.dpo_row()
    assert dpo["chosen"] == [{"role": "assistant", "content": "like this"}] and dpo["prompt"][-1]["content"] == "how?"
    assert parse_dialogue("\n\nHuman: a\n\nAssistant:", "x")[-1] == {"role": "assistant", "content": ""}


@pytest.mark.parametrize(
    "row, message",
    [
        ({"chosen": "\n\nHuman: a\n\nAssistant: b"}, "row 3: field 'rejected'"),
        ({"chosen": 5, "rejected": "x"}, "row 3: field 'chosen'"),
        (
            {"chosen": "Human: a", "rejected": "\n\nHuman: a\n\nAssistant: b"},
            "row 3 field 'chosen': dialogue does not start",
        ),
        ({"chosen": "\n\nHuman: a", "rejected": "\n\nHuman: a\n\nAssistant: b"}, "row 3: field 'chosen' does not end"),
        ({"chosen": "\n\nHuman: a\n\nAssistant: b", "rejected": "\n\nHuman: z\n\nAssistant: b"}, "differ before"),
        ([1, 2], "row 3: expected a JSON object"),
    ],
)
def test_bad_records_name_row_and_field(row, message):
    with pytest.raises(ValueError, match=message):
        to_pair(row, "row 3")


def test_committed_slice_loads_and_matches_its_source_note():
    pairs, prov, dropped = load_pairs("local", "", 0, 600)
    assert len(pairs) + dropped == 600 and len(pairs) > 590
    source = (LOCAL_FILE.parent / "SOURCE.txt").read_text()
    assert prov["sha256"] in source and "MIT" in source
    with pytest.raises(ValueError, match="asked for records 590..610, it has 600"):
        load_pairs("local", "", 590, 20)


@pytest.mark.slow
def test_reward_model_tiny_end_to_end(tmp_path):
    doc = execute(EXERCISE, "cpu", EXERCISE.tiny, out=tmp_path)
    assert doc["status"] == "ok", doc["error"]
    m = doc["metrics"]
    assert m["missing_keys_at_load"]["value"] == 1 and "score.weight" in m["missing_keys_at_load"]["description"]
    assert 0.0 <= m["eval_accuracy"]["value"] <= 1.0 and m["steps"]["value"] == 3 * 2  # 3 epochs x 8/4 batches
    rows = doc["tables"]["before_after"]["rows"]
    assert [r[0] for r in rows] == ["untrained head", "trained"]
    # like with like: the seed's 0.75 is a last training step's batch of 4, compared with that quantity
    saved = json.loads((tmp_path / "phase10" / "reward_model" / "cpu" / "result.json").read_text())
    ref = saved["reference"][0]
    assert ref["metric"] == "last_step_accuracy" and ref["seed"] == 0.75 and "training step" in ref["note"]
    assert m["last_step_accuracy"]["value"] in (0.0, 0.25, 0.5, 0.75, 1.0)  # one batch of 4 pairs
    assert not any(r["metric"].startswith("eval_") for r in saved["reference"])
    assert (tmp_path / "phase10" / "reward_model" / "cpu" / "reward_loss.png").stat().st_size > 1000


def test_every_phase10_profile_resolves_and_a100_skips_cleanly_without_cuda(tmp_path):

    exercises = resolve("phase10")
    assert [e.id for e in exercises] == ["phase10.reward_model", "phase10.dpo", "phase10.compare", "phase10.judge"]
    for ex in exercises:
        for profile in ex.profiles:
            ex.config(profile)
        ex.config("cpu", ex.tiny)
    assert resolve("phase10.reward_model")[0].config("a100").model == "meta-llama/Llama-3.2-1B-Instruct"
    if torch.cuda.is_available():
        return
    hosted_key = bool(os.environ.get("ANTHROPIC_API_KEY"))
    for ex in exercises:
        doc = execute(ex, "a100", {}, out=tmp_path)
        # a hosted judge without its key is refused first (before any GPU work), else the missing GPU is
        why = "CUDA" if hosted_key or ex.id != "phase10.judge" else "ANTHROPIC_API_KEY is not set"
        assert doc["status"] == "skipped" and why in doc["reason"], (ex.id, doc["reason"])


def test_bf16_weights_swallow_an_adamw_step_that_fp32_keeps():

    torch.manual_seed(0)
    weights = torch.randn(100_000) * 0.02  # the scale of a trained LM's weights
    assert surviving_update_share(weights, 1e-5, torch.float32) > 0.99
    assert surviving_update_share(weights, 1e-5, torch.bfloat16) < 0.5  # most of the step rounds away


def test_the_a100_reward_model_keeps_fp32_master_weights_and_refuses_bf16_ones():

    cfg = EXERCISE.config("a100")
    assert cfg.train_backbone and cfg.dtype == "float32" and cfg.autocast == "bfloat16" and cfg.learning_rate == 1e-5
    with pytest.raises(ConfigError, match="round away in bfloat16 weights"):
        EXERCISE.config("a100", {"dtype": "bfloat16"})


@pytest.mark.slow
def test_full_fine_tune_with_bf16_autocast_runs_on_fp32_weights(tmp_path):
    """The a100 code path (whole model trained, fp32 weights, bf16 autocast) on one tiny CPU step."""
    overrides = dict(
        EXERCISE.tiny,
        train_backbone=True,
        autocast="bfloat16",
        n_train=4,
        n_eval=4,
        max_length=8,
        epochs=1,
        learning_rate=1e-5,
    )
    doc = execute(EXERCISE, "cpu", overrides, out=tmp_path)
    assert doc["status"] == "ok", doc["error"]
    assert doc["models"][0]["dtype"] == "float32 weights, bfloat16 autocast" and doc["metrics"]["steps"]["value"] == 1
    assert doc["metrics"]["bf16_update_survival"]["value"] < 0.5
    assert any(f.startswith("Full fine-tune with float32 weights, bfloat16 autocast") for f in doc["findings"])
