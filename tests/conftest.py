"""Test defaults: offline hub, one thread per process (2 shared cores), no framework telemetry."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from lab.toolchain import quiet_frameworks  # noqa: E402  (every framework's telemetry off, before any import)

quiet_frameworks()

import pytest  # noqa: E402


def pytest_collection_modifyitems(config, items):
    try:
        import torch

        has_gpu = torch.cuda.is_available()
    except ImportError:
        has_gpu = False
    if has_gpu:
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(autouse=True, scope="session")
def _torch_threads():
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:
        pass
    yield


@pytest.fixture(scope="session")
def lab_server():
    """`lab serve` for the embedded SmolLM2 (+ MiniLM embeddings) on a free loopback port, one per
    test session: ``.url`` (Anthropic SDK base_url), ``.openai_url`` (``url/v1``), ``.api_key``, ``.model``.
    The model loads on the first request that needs it."""
    from types import SimpleNamespace

    from lab.serve.background import serving

    api_key = "sk-lab-serve-test"
    with serving("local:smollm2-135m-instruct", api_key=api_key) as url:
        yield SimpleNamespace(url=url, openai_url=f"{url}/v1", api_key=api_key, model="smollm2-135m-instruct")
