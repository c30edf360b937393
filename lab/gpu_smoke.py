"""`make gpu-smoke`: the a100 code path of Phases 8-12 on a real GPU, with the tiny stand-in models.

What a CPU smoke cannot show is the device itself: CUDA kernels of bitsandbytes (NF4 matmuls, the
paged 8-bit AdamW), bf16 autocast on the GPU, ``device_map={"": 0}`` and the CUDA memory readings.
This runs the same smoke as ``lab run ... --profile a100 --smoke`` on the GPU — lab.device then
takes its CUDA branch for every switch — and writes one summary file naming the device. It refuses
to start without CUDA ("no CUDA device") instead of quietly repeating the CPU smoke.

    python -m lab.gpu_smoke [--out DIR] [--jobs N] [PHASE ...]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from lab.device import NoCudaDevice, require_cuda
from lab.paths import SCRATCH_ROOT
from lab.registry import resolve
from lab.scheduler import run_all

PHASES = ("phase08", "phase09", "phase10", "phase11", "phase12")
SUMMARY = "gpu_smoke.json"


def summarize(device_name: str, finished, started: float) -> dict:
    """The summary document: the device, and per exercise its status, reason and wall time."""
    return {
        "device": device_name,
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "wall_s": round(time.time() - started, 1),
        "ok": all(job.status == "ok" for job in finished if job.exercise is not None),
        "jobs": [
            {
                "job": job.key,
                "status": job.status,
                "seconds": job.seconds and round(job.seconds, 1),
                "detail": job.detail,
            }
            for job in finished
        ],
    }


def main(argv: list[str] | None = None) -> int:

    parser = argparse.ArgumentParser(prog="python -m lab.gpu_smoke", description=__doc__.split("\n\n")[0])
    parser.add_argument("phases", nargs="*", default=list(PHASES), help="phases or exercise ids (default: 8-12)")
    parser.add_argument("--out", type=Path, default=SCRATCH_ROOT / "gpu-smoke", help="where results and the summary go")
    parser.add_argument("--jobs", type=int, default=1, help="exercises side by side (default 1: one GPU)")
    args = parser.parse_args(argv)
    try:
        device_name = require_cuda("make gpu-smoke")
    except NoCudaDevice as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    exercises = [ex for target in args.phases for ex in resolve(target) if "a100" in ex.profiles]
    started = time.time()
    finished = run_all([(ex, {}) for ex in exercises], "a100", args.jobs, out=args.out, smoke=True)
    summary = summarize(device_name, finished, started)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / SUMMARY).write_text(json.dumps(summary, indent=2) + "\n")
    print(
        f"{device_name}: {'all ok' if summary['ok'] else 'FAILURES'} in {summary['wall_s']} s -> {args.out / SUMMARY}"
    )
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
