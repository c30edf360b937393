"""`lab doctor`'s a100 checks on injected values: driver vs torch's CUDA, bitsandbytes' backend, disk
vs the a100 downloads, gated access (mocked, never the network) and the LLM endpoints."""

from huggingface_hub.errors import GatedRepoError

from lab import doctor_a100 as d

A100 = "535.104.05, NVIDIA A100-SXM4-80GB\n"


def test_driver_and_torch_cuda_fit_or_say_what_to_do():
    assert d.driver_check(A100, "12.6")[1] is True
    name, ok, detail = d.driver_check(A100, "13.0")
    assert ok is False and "needs >= 580.65.06" in detail and "upgrade the driver" in detail
    assert d.driver_check(A100, None)[1] is False  # the CPU build on a GPU machine
    assert d.driver_check(None, None)[1] is None
    assert d.driver_check(None, "12.8")[1] is False
    assert d.driver_check(None, None, smi_error="nvidia-smi is installed but failed")[1] is False


def test_bitsandbytes_backend():
    assert d.bitsandbytes_check("CUDA", True) == ("bitsandbytes backend", True, "cuda")
    assert d.bitsandbytes_check("CUDA", False, "libcudart.so.13 missing")[1] is False
    assert d.bitsandbytes_check("CPU", True)[1] is None
    assert d.bitsandbytes_check(None, False, "ImportError: x")[2] == "not importable: ImportError: x"


def test_model_ids_come_from_the_a100_profiles_values():
    values = [
        "meta-llama/Llama-3.1-8B-Instruct",
        "local:meta-llama/Llama-3.1-8B-Instruct",
        "bfloat16",
        ["all-minilm-l6-v2", "sentence-transformers/all-mpnet-base-v2", "bm25"],
        3,
        "openai:meta-llama/Llama-3.1-8B-Instruct@http://127.0.0.1:8000/v1",
        "anthropic:claude-sonnet-4-5",
    ]
    assert d.a100_model_ids(values) == ["meta-llama/Llama-3.1-8B-Instruct", "sentence-transformers/all-mpnet-base-v2"]


def test_disk_counts_only_what_is_not_cached_yet():
    ids = ["meta-llama/Llama-3.1-8B-Instruct", "mistralai/Mixtral-8x7B-Instruct-v0.1", "org/unknown"]
    cached = {"meta-llama/Llama-3.1-8B-Instruct"}.__contains__
    name, ok, detail = d.disk_check(ids, cached, 50 * 10**9, "/hf")
    assert ok is False and "need 93.4 GB (2 of 3 not fully cached)" in detail and "size unknown: org/unknown" in detail
    assert d.disk_check(ids, cached, 50 * 10**9, "/hf", required=False)[1] is None  # no GPU: report only
    assert d.disk_check(ids, cached, 200 * 10**9, "/hf")[1] is True


def test_gated_access_is_asked_only_with_a_token():
    asked = []
    assert all(ok is None for _, ok, _ in d.gated_checks(None, asked.append)) and asked == []

    def access(repo):
        asked.append(repo)
        if "Mixtral" in repo:
            err = GatedRepoError.__new__(GatedRepoError)
            Exception.__init__(err, "403")
            raise err

    checks = {name: (ok, detail) for name, ok, detail in d.gated_checks("hf_x", access)}
    assert asked == list(d.GATED)
    assert checks["access meta-llama/Llama-3.1-8B-Instruct"][0] is True
    ok, detail = checks["access mistralai/Mixtral-8x7B-Instruct-v0.1"]
    assert ok is False and "no access to the gated repo" in detail


def test_endpoints_phases_13_to_16_will_call():
    served = "openai:meta-llama/Llama-3.1-8B-Instruct@http://127.0.0.1:8000/v1"
    down = list(d.endpoint_checks([served, served], None, lambda url: "ConnectionRefusedError"))
    assert down[0][:2] == (f"endpoint {served}", False) and "start the model server" in down[0][2]
    assert down[1] == (
        "LLM for phases 13-16",
        None,
        "local:smollm2-135m-instruct: the default (no --llm / LAB_LLM), for exercises whose config names no llm",
    )
    up = list(d.endpoint_checks([served], "anthropic:claude-sonnet-4-5", lambda url: None, required=False))
    assert up[0][1] is True and up[1][2].startswith("anthropic:claude-sonnet-4-5: $LAB_LLM")
    assert list(d.endpoint_checks([served], None, lambda url: "refused", required=False))[0][1] is None
