"""The agent toolchain `make setup` installs: Node 24 + OpenClaw in the venv, frameworks, telemetry off."""

import os

import pytest

from lab import toolchain
from lab.doctor import AGENT_PACKAGES, agent_toolchain


@pytest.mark.parametrize(
    "version, ok",
    [
        ("v24.22.3", True),
        ("v24.16.0", True),
        ("v24.15.9", False),
        ("v25.3.0", False),
        ("v26.1.0", True),
        ("v20.20.2", False),
        ("junk", False),
    ],
)
def test_node_versions_openclaw_accepts(version, ok):
    assert toolchain.node_ok(version) is ok


def test_quiet_frameworks_sets_defaults_and_keeps_explicit_settings(monkeypatch):
    for key in toolchain.TELEMETRY_OFF:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("RAGAS_DO_NOT_TRACK", "false")  # someone opted in on purpose
    toolchain.quiet_frameworks()
    assert os.environ["CREWAI_DISABLE_TELEMETRY"] == "true" and os.environ["ANONYMIZED_TELEMETRY"] == "False"
    assert os.environ["RAGAS_DO_NOT_TRACK"] == "false"


def test_doctor_shows_node_openclaw_and_the_frameworks_installed_by_make_setup():
    """`make setup` installs all of these; a row that is not ok names the command that fixes it."""
    rows = {name: (ok, detail) for name, ok, detail in agent_toolchain()}
    for pkg in AGENT_PACKAGES:
        assert rows[pkg][0], f"{pkg}: {rows[pkg][1]}"
    ok, detail = rows["node (for OpenClaw)"]
    assert ok and detail.startswith("v24."), detail
    assert str(toolchain.node_prefix()) in detail  # project-local, not the machine's Node
    ok, detail = rows["openclaw"]
    assert ok and detail.startswith("OpenClaw 2026.9."), detail
    assert rows["framework telemetry"][0]
    assert toolchain.node_env()["PATH"].split(os.pathsep)[0] == str(toolchain.node_bin().parent)
