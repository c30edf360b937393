"""Phase 16 under attack: the real ``python -m phase16_capstone serve`` on loopback, hostile requests
sent with raw HTTP clients (``http.client``, and sockets where a client would refuse to misbehave).

For every hostile request: the status the server deliberately answers, that it still serves a normal
request afterwards, and that nothing was written (no job row for a bad Update, no forged line in
its log). Then a soak: 200 mixed good and bad requests from 8 concurrent clients — no 5xx, no lost or
duplicated job, every chat replied to exactly once.

The server runs as a subprocess with its real logging (its stderr is the log read here), two worker
threads, the scripted OpenAI-compatible LLM, a fake Telegram Bot API (``tests/fake_telegram.py``)
and the embedded PostgreSQL in a table namespace of its own.
"""

import http.client
import json
import logging
import os
import re
import socket
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import pytest
from fake_telegram import FakeBotAPI  # tests/fake_telegram.py

from lab.db import database_url
from lab.paths import REPO_ROOT
from phase16_capstone.http_guard import OneLineFormatter, printable
from phase16_capstone.job_store import JobStore
from phase16_capstone.scripted_llm import scripted_server

SECRET = "hostile-test-secret_1"
TOKEN = "654321:HOSTILE-token-never-logged"
SITE_URL = "https://blog.example/engine/"
WEBHOOK = "/telegram/webhook"
FORGED = "FORGED 2026-01-01 phase16.api ERROR an attacker wrote this line"


@pytest.fixture(scope="module")
def server(tmp_path_factory):

    tmp = tmp_path_factory.mktemp("hostile")
    corpus = tmp / "corpus"
    corpus.mkdir()
    (corpus / "leases.md").write_text(
        "# Leases\nA worker claims a job with FOR UPDATE SKIP LOCKED and renews its "
        "lease; when the worker dies the lease expires and another worker resumes.\n"
    )
    namespace = f"p16h_{uuid.uuid4().hex[:8]}"
    store = JobStore(namespace=namespace)
    bot = FakeBotAPI()
    log_path = tmp / "server.log"
    with scripted_server() as (llm_url, _):
        env = {
            **os.environ,
            "LAB_DATABASE_URL": database_url(),
            "ENGINE_TELEGRAM_SECRET": SECRET,
            "ENGINE_TELEGRAM_TOKEN": TOKEN,
            "ENGINE_TELEGRAM_API": bot.url,
            "LAB_TRACES": str(tmp / "spans.jsonl"),
            "OMP_NUM_THREADS": "1",
            "TOKENIZERS_PARALLELISM": "false",
            "HF_HUB_OFFLINE": "1",
            "PYTHONPATH": os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH")) if p),
        }
        cmd = [
            sys.executable,
            "-m",
            "phase16_capstone",
            "serve",
            "--port",
            "0",
            "--workers",
            "2",
            "--namespace",
            namespace,
            "--llm",
            f"openai:scripted@{llm_url}",
            "--corpus",
            str(corpus),
            "--k",
            "1",
            "--site",
            str(tmp / "site"),
            "--site-url",
            SITE_URL,
        ]
        with open(log_path, "w") as log_file:
            proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=log_file, stderr=subprocess.STDOUT)
        try:
            port = _wait_for_port(proc, log_path)
            yield SimpleNamespace(port=port, store=store, bot=bot, log=log_path, site=tmp / "site")
        finally:
            proc.terminate()
            proc.wait(timeout=30)
            bot.close()
            store.drop()
            store.close()


def _wait_for_port(proc, log_path, timeout_s: float = 120.0) -> int:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = re.search(r"Uvicorn running on http://127\.0\.0\.1:(\d+)", log_path.read_text())
        if found:
            return int(found.group(1))
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited ({proc.returncode}):\n{log_path.read_text()[-3000:]}")
        time.sleep(0.1)
    raise TimeoutError(f"the server did not start:\n{log_path.read_text()[-3000:]}")


def call(server, method, path, body=None, headers=None):
    """(status, parsed JSON body) over a fresh connection."""
    if isinstance(body, (dict, list)):
        body, headers = json.dumps(body).encode(), {"Content-Type": "application/json", **(headers or {})}
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        data = response.read()
    finally:
        conn.close()
    return response.status, json.loads(data) if data else None


def hook(server, body, secret=SECRET):
    headers = {"Content-Type": "application/json", "X-Telegram-Bot-Api-Secret-Token": secret}
    return call(server, "POST", WEBHOOK, body if isinstance(body, bytes) else json.dumps(body).encode(), headers)


def raw(server, head: bytes, chunks=()) -> bytes:
    """Send a request head (and body chunks) on a socket; everything the server answers until it closes."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=60) as sock:
        sock.sendall(head)
        for chunk in chunks:
            sock.sendall(chunk)
        answer = b""
        while data := sock.recv(65536):
            answer += data
    return answer


def message(update_id, text, chat_id=77):
    return {
        "update_id": update_id,
        "message": {"message_id": 1, "date": 1700000000, "text": text, "chat": {"id": chat_id, "type": "private"}},
    }


def still_serves(server):
    status, health = call(server, "GET", "/health")
    assert status == 200 and health["ok"]
    return health


def job_rows(server) -> int:
    return sum(server.store.count_by_state().values())


# --- the findings, one hostile request each ---------------------------------------------------------

BAD_UPDATES = {
    "message is not an object": ({"update_id": 101, "message": "hi"}, "field 'message'"),
    "chat id is not a number": (
        {
            "update_id": 102,
            "message": {"message_id": 1, "date": 1700000000, "text": "x", "chat": {"id": "abc", "type": "private"}},
        },
        "field 'message.chat.id'",
    ),
    "update_id is 2^63": (message(2**63, "/publish overflow"), "field 'update_id'"),
    "text holds a lone surrogate": (
        b'{"update_id": 104, "message": {"message_id": 1, "date": 1700000000, '
        b'"chat": {"id": 77, "type": "private"}, "text": "/publish \\ud800 x"}}',
        "field 'message.text'",
    ),
    "body is not JSON": (b"{not json", "not JSON"),
    "JSON nested past the parser's depth": (b"[" * 100_000, "not JSON"),
}


@pytest.mark.parametrize("name", list(BAD_UPDATES))
def test_a_malformed_update_is_acknowledged_recorded_and_makes_no_job(server, name):
    body, field = BAD_UPDATES[name]
    before, seen = job_rows(server), still_serves(server)["telegram_updates_without_job"].get("malformed", 0)
    status, answer = hook(server, body)
    assert status == 200 and answer["ok"] and answer["job_id"] is None and field in answer["malformed"]
    health = still_serves(server)
    assert health["telegram_updates_without_job"]["malformed"] == seen + 1 and job_rows(server) == before


def test_an_edited_message_is_acknowledged_and_makes_no_job(server):
    before = job_rows(server)
    status, answer = hook(server, {"update_id": 201, "edited_message": message(201, "/publish edited")["message"]})
    assert status == 200 and answer["job_id"] is None and "edited message" in answer["ignored"]
    assert job_rows(server) == before and all(j.update_id != 201 for j in server.store.list_jobs())


def test_a_missing_or_wrong_secret_is_refused_before_anything_is_read(server):
    before = job_rows(server)
    assert hook(server, message(301, "/publish x"), secret="")[0] == 401
    status, answer = hook(server, message(302, "/publish x"), secret="not-the-secret")
    assert status == 403 and "wrong" in answer["error"]
    assert job_rows(server) == before


@pytest.mark.parametrize("path", ["/jobs/%00", f"/jobs/%00%0a{FORGED.replace(' ', '%20')}"])
def test_a_malformed_job_id_is_a_400_and_forges_no_log_line(server, path):
    status, answer = call(server, "GET", path)
    assert status == 400 and "job_id" in answer["error"] and "\x00" not in answer["error"]
    still_serves(server)
    lines = server.log.read_text().splitlines()
    assert not [line for line in lines if line.startswith("FORGED")]
    assert any("GET /jobs/%00" in line for line in lines)  # the access log keeps the path encoded


def test_a_declared_20_mb_body_is_a_413_before_a_byte_of_it_is_read(server):
    for path, extra in (("/jobs", b""), (WEBHOOK, f"X-Telegram-Bot-Api-Secret-Token: {SECRET}\r\n".encode())):
        answer = raw(
            server,
            b"POST "
            + path.encode()
            + b" HTTP/1.1\r\nHost: engine\r\nContent-Type: application/json\r\n"
            + extra
            + b"Content-Length: 20971520\r\n\r\n",
        )  # the body is never sent
        assert answer.startswith(b"HTTP/1.1 413 ") and b"over 1048576 bytes" in answer
    still_serves(server)


def test_a_streamed_body_is_cut_off_with_a_413_once_it_crosses_the_limit(server):
    before = job_rows(server)
    # exactly the limit (16 x 64 KiB), then one byte over it, and never the final 0-chunk: the 413
    # comes back while the body is still open. (Bytes sent past what the server read would make its
    # close a TCP reset that can swallow the answer, so the client stops at the first byte over.)
    chunks = [b"10000\r\n" + b"x" * 65536 + b"\r\n"] * 16 + [b"1\r\nx\r\n"]
    answer = raw(
        server,
        b"POST /jobs HTTP/1.1\r\nHost: engine\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n",
        chunks,
    )
    assert answer.startswith(b"HTTP/1.1 413 ") and b"connection: close" in answer.lower()
    assert job_rows(server) == before
    still_serves(server)


def test_a_topic_with_a_lone_surrogate_is_a_422_naming_the_field(server):
    before = job_rows(server)
    status, answer = call(server, "POST", "/jobs", b'{"topic": "\\ud800 x"}', {"Content-Type": "application/json"})
    assert status == 422 and "field 'topic'" in answer["error"] and "unicode" in answer["error"]
    assert job_rows(server) == before


def test_log_records_are_one_line_whatever_they_quote():

    try:
        raise ValueError(f"bad id\n{FORGED}")
    except ValueError:
        record = logging.LogRecord(
            "phase16.api",
            logging.ERROR,
            __file__,
            1,
            "GET %s failed",
            (printable("/jobs/\x00\n" + FORGED),),
            sys.exc_info(),
        )
    line = OneLineFormatter("%(name)s %(message)s").format(record)
    assert "\n" not in line and "\\n" + FORGED in line and "Traceback" in line and "\\x00" in line
    assert printable("\ud800\u2028" + "a" * 300, limit=10) == "\\ud800\\u2028aaaaaaaa…"


# --- soak: ~200 mixed requests, 8 clients ----------------------------------------------------------


def test_soak_200_mixed_requests_from_8_clients(server):
    chats = {5000 + i: 900 + i for i in range(6)}  # chat -> its one update_id, delivered 3 times (Telegram retries)
    bad = [body for body, _ in BAD_UPDATES.values() if not (isinstance(body, bytes) and len(body) > 1000)]
    requests = [
        ("hook", message(update_id, f"/publish leases for chat {chat}", chat), 200)
        for chat, update_id in chats.items()
        for _ in range(3)
    ]
    requests += [("hook", bad[i % len(bad)], 200) for i in range(60)]
    requests += [("hook-wrong-secret", message(999, "x"), 403) for _ in range(10)]
    requests += [("api", {"topic": f"worker leases, take {i}"}, 201) for i in range(4)]
    requests += [("api", {"topic": "x", "admin": True}, 422) for _ in range(16)]
    requests += [("get", "/jobs/%00%0a" + FORGED.replace(" ", "%20"), 400) for _ in range(30)]
    requests += [("get", "/jobs", 200) for _ in range(28)]
    requests += [("get", "/health", 200) for _ in range(34)]
    assert len(requests) == 200

    def send(request):
        kind, payload, expected = request
        if kind.startswith("hook"):
            status, answer = hook(server, payload, secret="wrong" if kind == "hook-wrong-secret" else SECRET)
        elif kind == "api":
            status, answer = call(server, "POST", "/jobs", payload)
        else:
            status, answer = call(server, "GET", payload)
        return request, status, answer

    order = requests[::2] + requests[1::2]  # interleave good and bad
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(send, order))
    assert [s for _, s, _ in results if s >= 500] == []
    assert [(r[0], s) for r, s, _ in results if s != r[2]] == []

    # no lost or duplicated job: one per update_id (every delivery answered with it), one per API request
    by_update: dict[int, set] = {}
    for (kind, payload, _), _, answer in results:
        if kind == "hook" and isinstance(payload, dict) and answer.get("job_id"):
            by_update.setdefault(payload["update_id"], set()).add(answer["job_id"])
    assert {u: len(ids) for u, ids in by_update.items()} == {u: 1 for u in chats.values()}
    api_ids = {answer["id"] for (kind, _, expected), _, answer in results if kind == "api" and expected == 201}
    mine = {i for ids in by_update.values() for i in ids} | api_ids
    assert len(api_ids) == 4 and mine <= {j.id for j in server.store.list_jobs(1000)}

    # every job ends, every chat hears back exactly once, no reply stuck in `sending`
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and (
        any(not server.store.get(j).terminal for j in mine)
        or server.store.pending_replies()
        or any(server.store.reply(j)["state"] != "sent" for ids in by_update.values() for j in ids)
    ):
        time.sleep(0.5)
    jobs = [server.store.get(j) for j in mine]
    assert {j.state for j in jobs} == {"published"}
    assert server.store.publications_count() == {j.id: 1 for j in jobs}  # the only jobs this server made
    for chat in chats:
        replies = server.bot.to(chat)
        assert len(replies) == 1 and replies[0].startswith("Published") and SITE_URL in replies[0]
    assert all(j.post_url.startswith(f"{SITE_URL}posts/") for j in jobs)
    assert str(server.site) not in json.dumps(call(server, "GET", "/jobs")[1])

    log = server.log.read_text()
    assert TOKEN not in log and SECRET not in log
    assert not [line for line in log.splitlines() if line.startswith("FORGED")]
