"""A partly downloaded Hugging Face snapshot is not a model: lab.models finds what is missing, resumes
it with snapshot_download when the hub may be reached, and says what is wrong when it cannot be
(incomplete download vs no access vs offline). A fake cache folder on disk; no network."""

import json

import huggingface_hub
import pytest
from huggingface_hub import constants
from huggingface_hub.errors import GatedRepoError

from lab import models
from lab.errors import MissingResource

REPO = "meta-llama/Llama-3.1-8B-Instruct"
COMMIT = "0e9e39f249a16976918f6564b8830bc894c89659"
SHARDS = [f"model-0000{i}-of-00004.safetensors" for i in range(1, 5)]


def fake_snapshot(cache, shards_present=2, incomplete_blob=True):
    """The HF cache layout an interrupted 4-shard download leaves: refs/main, snapshots/<commit>/ with
    config, index and the first shards (links into blobs/), and a blobs/<etag>.incomplete."""
    repo = cache / f"models--{REPO.replace('/', '--')}"
    snap = repo / "snapshots" / COMMIT
    snap.mkdir(parents=True)
    (repo / "blobs").mkdir()
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    (snap / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (snap / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": {f"layer.{i}": s for i, s in enumerate(SHARDS)}})
    )
    for i, shard in enumerate(SHARDS[:shards_present]):
        blob = repo / "blobs" / f"etag{i}"
        blob.write_bytes(b"w")
        (snap / shard).symlink_to(blob)
    if incomplete_blob:
        (repo / "blobs" / "etag9.incomplete").write_bytes(b"x" * 10)
    return snap


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.delenv("HF_TOKEN", raising=False)
    return tmp_path / "hub"


def test_missing_shards_and_interrupted_blobs_are_named(cache):
    snap = fake_snapshot(cache)
    problems = models.snapshot_problems(snap)
    assert problems[0].startswith("2 of 4 weight shards missing (model-00003-of-00004.safetensors")
    assert "1 interrupted download(s)" in problems[1]
    assert models._hf_cached(REPO) is None  # never handed out as if it were the model


def test_a_whole_snapshot_has_no_problems_and_resolves_to_its_folder(cache):
    snap = fake_snapshot(cache, shards_present=4, incomplete_blob=False)
    assert models.snapshot_problems(snap) == []
    assert models.resolve(REPO) == str(snap)


def test_links_to_missing_blobs_and_configs_without_weights_are_incomplete(tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    assert models.snapshot_problems(folder) == ["config.json but no weights file"]
    (folder / "model.safetensors").symlink_to(tmp_path / "never-finished")
    assert models.snapshot_problems(folder)[0] == "1 file(s) link to blobs never finished (model.safetensors)"


def test_offline_an_incomplete_download_says_so_not_hf_token(cache, monkeypatch):
    fake_snapshot(cache)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(MissingResource) as err:
        models.resolve(REPO)
    message = str(err.value)
    assert "is incomplete (2 of 4 weight shards missing" in message and "unset HF_HUB_OFFLINE" in message
    assert "HF_TOKEN" not in message


def test_online_the_download_is_resumed_with_the_load_files_only(cache, monkeypatch):
    snap = fake_snapshot(cache)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    real = huggingface_hub.snapshot_download
    calls = []

    def download(repo_id, local_files_only=False, **kwargs):
        if local_files_only:
            return real(repo_id, local_files_only=True)
        calls.append((repo_id, kwargs))
        for shard in SHARDS[2:]:
            (snap / shard).write_bytes(b"w")
        (cache / f"models--{REPO.replace('/', '--')}" / "blobs" / "etag9.incomplete").unlink()
        return str(snap)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", download)
    assert models.resolve(REPO) == str(snap)
    assert calls == [(REPO, {"allow_patterns": models.LOAD_PATTERNS})]  # not original/*.pth nor *.pt copies


def test_resuming_without_access_says_no_access(cache, monkeypatch):
    fake_snapshot(cache)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    real = huggingface_hub.snapshot_download
    gated = GatedRepoError.__new__(GatedRepoError)
    Exception.__init__(gated, "403 Client Error: Access to model meta-llama/Llama-3.1-8B-Instruct is restricted")

    def download(repo_id, local_files_only=False, **kwargs):
        if local_files_only:
            return real(repo_id, local_files_only=True)
        raise gated

    monkeypatch.setattr(huggingface_hub, "snapshot_download", download)
    with pytest.raises(
        MissingResource,
        match=r"incomplete .* resuming failed: no access to the gated repo "
        r"meta-llama/Llama-3.1-8B-Instruct: HF_TOKEN is not set",
    ):
        models.resolve(REPO)


def test_a_load_failure_is_explained_by_what_is_actually_wrong(cache, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    gated = GatedRepoError.__new__(GatedRepoError)
    Exception.__init__(gated, "403")
    try:
        try:
            raise gated
        except GatedRepoError as inner:
            raise OSError("You are trying to access a gated repo.") from inner
    except OSError as exc:
        monkeypatch.setenv("HF_TOKEN", "hf_x")
        assert "no access to the gated repo" in models.explain_load_failure(REPO, exc)
        assert "HF_TOKEN is set but its account" in models.explain_load_failure(REPO, exc)
    fake_snapshot(cache)
    assert "the download in" in models.explain_load_failure(REPO, OSError("missing shard"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert "HF_HUB_OFFLINE=1" in models.explain_load_failure("org/not-cached", OSError("no file"))
