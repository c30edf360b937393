"""Decode throughput of the model behind `lab/llm` (default: embedded SmolLM2-135M-Instruct).

    .venv/bin/python benchmarks/llm_throughput.py [--llm SPEC] [--tokens 64] [--repeats 3]

Prints load time and tokens/s per repeat (after one warm-up). A benchmark, not a test: numbers
depend on the machine and on whatever else it is running (1-minute load average is printed).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

PROMPT = "Explain in detail why the KV cache dominates GPU memory at long context."


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--llm", default=None, help="LLM spec (default: $LAB_LLM or embedded SmolLM2)")
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import torch

    from lab.llm import from_spec

    t0 = time.perf_counter()
    llm = from_spec(args.llm)
    llm.chat([{"role": "user", "content": "Hi"}], max_tokens=4)  # load + warm-up
    load_s = time.perf_counter() - t0
    rates = []
    for _ in range(args.repeats):
        reply = llm.chat([{"role": "user", "content": PROMPT}], max_tokens=args.tokens)
        rates.append(reply.usage.output_tokens / reply.latency_s)
    print(f"model: {llm.spec}  torch threads: {torch.get_num_threads()}  load_avg_1m: {os.getloadavg()[0]:.2f}")
    print(f"load + warm-up: {load_s:.1f} s")
    print(f"decode tokens/s over {args.repeats} x {args.tokens} tokens: "
          f"median {statistics.median(rates):.1f}, min {min(rates):.1f}, max {max(rates):.1f}")


if __name__ == "__main__":
    main()
