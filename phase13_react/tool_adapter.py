"""The embedded model tuned to act: a tool-use LoRA on the embedded chat model, trained with the Phase 9 code.

    lab artifacts build phase13.tool_adapter        # train the recipe below into the artifact store
    python -m phase13_react.tool_adapter --publish  # copy it to phase13_react/published/ (fp16, + log)
    lab serve                                       # serves it as lab.models.AGENT_LLM beside the base

The data is ``phase13_react.tool_use_data`` (generated, seeded; its sha256 is in the recipe); the
trainer is Phase 9's ``train_sft`` with the loss on every assistant turn, so each conversation teaches
all of its decisions (call, call, answer) while its long tool-listing prompt is computed once. One
epoch on two CPU cores takes longer than the demo's budget (``training_log.json`` has the measured
time), so the adapter is published: committed with its recipe hash, data hash and training log, and loaded by name
(``lab.models.AGENT_LLM``) without training. A changed recipe or data gives a new recipe hash, and
``phase13.tool_tuning`` refuses a published adapter whose recipe no longer matches.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path
from typing import Any

from lab.artifacts import ArtifactKind, Recipe, Reporter, load
from lab.errors import ConfigError
from lab.models import AGENT_LLM, DEFAULT_LLM, EMBEDDED_LLM, PUBLISHED_ADAPTERS
from phase09_finetuning.sft import LORA_TARGETS, train_sft
from phase13_react.tool_use_data import GENERATOR_VERSION, generate, training_rows

PUBLISHED = PUBLISHED_ADAPTERS[AGENT_LLM]
HUB_BASE = EMBEDDED_LLM.hub_id  # written into the published adapter_config (portable)
TRAINER_VERSION = "tool_adapter/1"

# r=8 on every projection keeps the fp16 adapter under 5 MB (2.44M parameters); lr 1e-3 because one
# epoch of ~230 conversations is ~120 optimizer steps of 2; 1,024 tokens hold every conversation whole.
RECIPE: dict[str, Any] = dict(lora_r=8, lr=1e-3, batch_size=2, epochs=1.0, max_length=1024, seed=0)
DATA: dict[str, Any] = dict(seed=0)


def recipe_params(profile: str) -> dict[str, Any]:
    """Everything that determines the adapter's weights (cheap: generates the data, loads no model)."""

    if profile != "cpu":
        raise ConfigError(
            f"phase13.tool_adapter has a cpu recipe only (profile {profile!r}); the a100 profile's "
            "agents run a capable served model instead"
        )
    data = generate(**DATA)
    return dict(
        base_model=DEFAULT_LLM,
        data=dict(
            DATA, generator=GENERATOR_VERSION, sha256=data.sha256(), conversations=sum(e.terminal for e in data.train)
        ),
        lora_targets=list(LORA_TARGETS),
        loss_on="assistant",
        trainer=TRAINER_VERSION,
        **RECIPE,
    )


def build(profile: str, folder: Path, reporter: Reporter) -> dict[str, Any]:
    """Train the recipe into ``folder``: the adapter (fp16), ``training_log.json``."""

    params = recipe_params(profile)
    rows = training_rows(generate(**DATA).train)
    reporter.log(f"tool-use SFT: {len(rows)} conversations, data {params['data']['sha256'][:12]}")
    res = train_sft(
        DEFAULT_LLM,
        rows,
        folder,
        lora_r=RECIPE["lora_r"],
        lr=RECIPE["lr"],
        batch_size=RECIPE["batch_size"],
        epochs=RECIPE["epochs"],
        max_length=RECIPE["max_length"],
        seed=RECIPE["seed"],
        loss_on="assistant",
        ctx=reporter,
    )
    to_fp16(folder)
    log = dict(
        losses=res["losses"],
        loss_steps=res["loss_steps"],
        steps=res["steps"],
        epochs=res["epochs"],
        rows=res["rows"],
        train_time_s=round(res["train_time_s"], 1),
        s_per_step=round(res["s_per_step"], 2),
        trainable_params=res["trainable_params"],
        peak_memory_bytes=res["peak_memory_bytes"],
    )
    (folder / "training_log.json").write_text(json.dumps(log, indent=1) + "\n")
    adapter_bytes = (folder / "adapter_model.safetensors").stat().st_size
    return {
        "metrics": dict(
            steps=res["steps"],
            final_loss=res["losses"][-1],
            train_time_s=log["train_time_s"],
            adapter_bytes=adapter_bytes,
            conversations=len(rows),
        )
    }


def to_fp16(folder: Path) -> None:
    """Store the adapter's weights in fp16 (half the bytes; llama.cpp and PEFT load either) and name its base
    by hub id, not by this machine's cache path."""
    import torch  # noqa: PLC0415 (heavy: torch loads on first use)
    from safetensors.torch import load_file, save_file  # noqa: PLC0415 (heavy: safetensors loads on first use)

    weights = folder / "adapter_model.safetensors"
    save_file({k: v.to(torch.float16) for k, v in load_file(str(weights)).items()}, str(weights))
    config_path = folder / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config["base_model_name_or_path"] = HUB_BASE
    config_path.write_text(json.dumps(config, indent=2) + "\n")


TOOL_ADAPTER = ArtifactKind(
    name="phase13.tool_adapter",
    params=recipe_params,
    build=build,
    description=f"{EMBEDDED_LLM.label} tuned for tool use (tool_use_data, LoRA r=8); published as {AGENT_LLM}",
)


def published_recipe() -> dict[str, Any]:
    """The recipe the committed adapter was trained from (``published.json``)."""
    path = PUBLISHED / "published.json"
    if not path.is_file():
        raise ConfigError(f"{path} is missing: publish the adapter with python -m phase13_react.tool_adapter --publish")
    return json.loads(path.read_text())


def check_published(profile: str = "cpu") -> dict[str, Any]:
    """The published adapter's record, or a ConfigError when its recipe is not the current one (the data
    generator or the recipe changed since it was trained)."""
    record = published_recipe()
    current = Recipe(TOOL_ADAPTER.name, recipe_params(profile)).sha256
    if record["recipe_sha256"] != current:
        raise ConfigError(
            f"the published {AGENT_LLM} was trained from recipe {record['recipe_sha256'][:12]}, the "
            f"current recipe is {current[:12]}: re-train (lab artifacts build phase13.tool_adapter) "
            "and publish (python -m phase13_react.tool_adapter --publish)"
        )
    return record


def publish(profile: str = "cpu") -> Path:
    """Copy the stored artifact of the current recipe to ``PUBLISHED`` with its recipe and training log."""

    artifact = load(TOOL_ADAPTER, profile)
    PUBLISHED.mkdir(parents=True, exist_ok=True)
    for name in ("adapter_config.json", "adapter_model.safetensors", "training_log.json"):
        shutil.copy2(artifact.path / name, PUBLISHED / name)
    record = dict(
        artifact=TOOL_ADAPTER.name,
        recipe_sha256=artifact.recipe.sha256,
        params=dict(artifact.params),
        metrics=dict(artifact.metrics),
    )
    (PUBLISHED / "published.json").write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
    return PUBLISHED


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--publish", action="store_true", help="copy the trained artifact to " + str(PUBLISHED))
    args = parser.parse_args(argv)
    if args.publish:
        print(f"published {publish()}")
    else:
        print(json.dumps(check_published(), indent=1))


if __name__ == "__main__":
    main()
