"""Test defaults: offline hub, one thread per process (2 shared cores), no framework telemetry, a
private artifact store per session, and a record of the metrics each exercise's tiny runs emit (read
by the contract test)."""

import functools
import os
import shutil
import tempfile
from types import SimpleNamespace

from lab.serve.background import serving

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from lab.toolchain import quiet_frameworks  # noqa: E402  (every framework's telemetry off, before any import)

quiet_frameworks()
# Adapters, datasets and generations that tests train go to a throwaway store (subprocesses inherit
# it), never to the user's: set unconditionally, before anything asks for the store.
ARTIFACT_STORE = tempfile.mkdtemp(prefix="lab-test-artifacts-")
os.environ["LAB_ARTIFACTS"] = ARTIFACT_STORE

import pytest  # noqa: E402
from offline import forbid_network  # noqa: E402  (tests/offline.py)

from lab import runner  # noqa: E402

forbid_network()  # the suite runs offline by construction: a connection off this machine is an error

# exercise id -> metric names emitted by runs of its tiny config (possibly with extra keys) this session
TINY_METRICS: dict[str, set[str]] = {}


def _recording(execute):
    """Wrap lab.runner.execute before any test module imports it, so every tiny run the suite makes
    anyway also feeds the registry-wide contract test (which then need not run them all again)."""

    @functools.wraps(execute)
    def wrapper(exercise, profile, overrides, *args, **kwargs):
        doc = execute(exercise, profile, overrides, *args, **kwargs)
        if doc["status"] != "failed" and profile == "cpu" and set(exercise.tiny) <= set(overrides):
            TINY_METRICS.setdefault(exercise.id, set()).update(doc["metrics"])
        return doc

    return wrapper


runner.execute = _recording(runner.execute)


@pytest.fixture(scope="session")
def tiny_metrics() -> dict[str, set[str]]:
    return TINY_METRICS


def pytest_collection_modifyitems(config, items):
    # tests marked `last` read what the other tests recorded: run them after everything else
    items.sort(key=lambda item: item.get_closest_marker("last") is not None)
    try:
        import torch  # noqa: PLC0415 (heavy: torch loads on first use)

        has_gpu = torch.cuda.is_available()
    except ImportError:
        has_gpu = False
    if has_gpu:
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(ARTIFACT_STORE, ignore_errors=True)


@pytest.fixture(autouse=True, scope="session")
def _torch_threads():
    try:
        import torch  # noqa: PLC0415 (heavy: torch loads on first use)

        torch.set_num_threads(1)
    except ImportError:
        pass
    yield


@pytest.fixture(scope="session")
def lab_server():
    """`lab serve` for the embedded SmolLM2 and, beside it, the tool-tuned smollm2-135m-agent (+ MiniLM
    embeddings) on a free loopback port, one per test session: ``.url`` (Anthropic SDK base_url),
    ``.openai_url`` (``url/v1``), ``.api_key``, ``.model``, ``.agent_model``. Models load on first use."""

    api_key = "sk-lab-serve-test"
    with serving(["local:smollm2-135m-instruct", "local:smollm2-135m-agent"], api_key=api_key) as url:
        yield SimpleNamespace(
            url=url,
            openai_url=f"{url}/v1",
            api_key=api_key,
            model="smollm2-135m-instruct",
            agent_model="smollm2-135m-agent",
        )
