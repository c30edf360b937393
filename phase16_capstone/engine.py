"""The content engine: a worker claims a job and drives it through Researcher → Writer ⇄ Editor → Publisher.

The loop is an evaluator–optimizer workflow, not an autonomous agent: each stage is a function of
what earlier stages stored, and the job's state in the database says which stage comes next. So
``run_job`` can start on any job at any state — a fresh one, or one a killed worker left half done —
and carry it on:

    researching  HyDE retrieval, evidence stored                         → writing
    writing      a draft (revision r) with [n] citations stored          → editing
    editing      rubric judge + editor_gate: APPROVE                     → publishing
                   (counted as a review only if the judge passed calibration
                    this run; else the post is published marked UNREVIEWED)
                                             REJECT (feedback stored)    → writing, revisions + 1
                                             ESCALATE                    → escalated (terminal)
    publishing   PostRecord → site.publish (idempotent), publication row → published (terminal)

A published job's ``post_url`` is where readers find the post: the site's public URL
(``EngineSettings.site_url``) + the post's path, or that path alone when no URL is configured —
never where the deploy target wrote the file on this machine.

Each arrow is one transaction in the job store (``JobStore.complete_stage``), fenced by the lease.
While a job runs, a heartbeat thread renews the lease; if the process dies, the lease expires and
another worker's ``claim`` resumes the job at its last completed stage. A stage that raises fails
the job with the error stored; a lost lease stops the worker quietly (the new owner carries on).

The engine takes any ``lab.llm.LLM`` (the seam for Phase 15's tracing / resilient wrappers) and
meters it per stage. When a job with a chat ends, the chat gets its reply (``telegram.Replier``) at
least once, and a second time only in the one window ``JobStore.take_reply`` describes.
"""

from __future__ import annotations

import argparse
import inspect
import logging
import os
import signal
import socket
import threading
import time
import typing
import uuid
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from lab.errors import ConfigError
from lab.models import EMBEDDED_LLM
from lab.paths import REPO_ROOT
from phase11_evals.editor_gate import DEFAULT_THRESHOLDS
from phase15_production.defence import ALLOW
from phase15_production.telemetry import TracedLLM
from phase16_capstone.editor import calibrate, feedback_for_writer, make_judge, review
from phase16_capstone.job_store import Job, JobStore, Lease, LeaseLost
from phase16_capstone.job_tracing import job_trace, stage_span, tracing_for
from phase16_capstone.metering import StageMeter
from phase16_capstone.publisher import DirectoryDeploy, GitDeploy, publish
from phase16_capstone.researcher import CorpusIndex, Evidence
from phase16_capstone.site_builder import (
    Citation,
    PostRecord,
    RevisionRecord,
    check_site_url,
    make_slug,
    post_path,
    public_url,
)
from phase16_capstone.telegram import WITHHELD, reply_text
from phase16_capstone.untrusted import check_output, check_post, defence_for
from phase16_capstone.writer import write as write_draft

log = logging.getLogger("phase16.engine")
CRASH_POINTS = ("mid_stage", "between_stages", "publishing", "after_publish", "reply_sending")
CRASH_ENV = "ENGINE_CRASH_AT"  # one of CRASH_POINTS: this process SIGKILLs itself the first time it gets there


def crash_point(name: str) -> None:
    """A place where a machine may die, made reachable on purpose (``phase16.load`` starts a victim
    worker with ``ENGINE_CRASH_AT=<point>``): ``mid_stage`` — a stage's work is done, not committed;
    ``between_stages`` — a stage committed, the next not started; ``publishing`` — the site files are
    deployed, the publication not committed; ``after_publish`` — the job is published, its chat reply
    not claimed; ``reply_sending`` — the reply is claimed (``sending``), not sent. Nothing happens
    unless the variable names this point."""
    if os.environ.get(CRASH_ENV) == name:
        log.warning("crash point %s: SIGKILL", name)
        os.kill(os.getpid(), signal.SIGKILL)


# --- the settings: one model for the engine, its command line and the Phase 16 exercises -----------------

DEFAULT_SITE = REPO_ROOT / "runs" / "site"
_BOUNDS = ("ge", "gt", "le", "lt")


def flag(default: Any, description: str, *, env: str | None = None, metavar: str | None = None, **bounds: Any) -> Any:
    """An ``EngineSettings`` field that is also a command-line flag (``--name-with-dashes``): its description
    is the flag's help; ``env`` names a variable whose value, when set, is the flag's default instead."""
    cli = {key: value for key, value in (("env", env), ("metavar", metavar)) if value is not None}
    if isinstance(default, list):
        return Field(
            default_factory=lambda: list(default), description=description, json_schema_extra={"cli": cli}, **bounds
        )
    return Field(default, description=description, json_schema_extra={"cli": cli}, **bounds)


EDITOR_MODES = ("gate", "shadow")  # see editor.review


def _store_default(name: str) -> Any:
    """``JobStore``'s own default for ``name``: the store defines it, the settings only read it."""
    return inspect.signature(JobStore.__init__).parameters[name].default


class EngineSettings(BaseModel):
    """Everything that configures an engine, defined once.

    ``python -m phase16_capstone`` makes its flags from the fields declared with ``flag()``
    (``add_flags`` / ``from_args``: ``--name-with-dashes``, the description as help, the default), and a
    Phase 16 exercise config takes the fields it exposes with ``setting()`` (type checks, description and
    bounds from here; the default too, unless the exercise runs smaller) and turns them back into
    settings with ``from_config``. ``llm``, ``fallback``, ``site``, ``namespace`` and ``lease_s`` say how
    ``build_engine`` makes the engine's parts (model, deploy target, job store); an ``Engine`` handed its
    parts reads the others.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    llm: str | None = flag(None, f"lab.llm spec (default: $LAB_LLM or the embedded {EMBEDDED_LLM.family})")
    fallback: list[str] = flag(
        [],
        "a provider to fall back to when --llm keeps failing (repeatable, in order): the "
        "chain runs behind Phase 15's retry + circuit breaker (phase15_production.resilient_calls)",
        metavar="SPEC",
    )
    corpus: str | None = flag(
        None,
        "folder of .md/.txt files, the default corpus of jobs that name none (default: the repo's notes + READMEs)",
    )
    site: str = flag(str(DEFAULT_SITE), "site folder, or git+URL to commit and push")
    site_url: str | None = flag(
        None,
        "the site's public URL: a job's post_url is it + posts/<slug>.html "
        "(default $ENGINE_SITE_URL; unset: the site-relative path)",
        env="ENGINE_SITE_URL",
    )
    namespace: str = flag(_store_default("namespace"), "prefix of the engine's tables")
    lease_s: float = flag(_store_default("lease_s"), "a job's lease; a dead worker's job resumes after it", gt=0)
    k: int = flag(3, "evidence chunks per post", ge=1)
    hyde_max_tokens: int = flag(60, "tokens of the HyDE hypothesis", ge=1)
    writer_max_tokens: int = flag(80, "tokens per Writer paragraph", ge=1)
    max_revisions: int = flag(DEFAULT_THRESHOLDS.max_revisions, "Editor: escalate after this many revisions", ge=0)
    editor: str = flag(
        "gate",
        "Editor mode: gate (its verdict decides) or shadow (the verdict is recorded, every draft is "
        "published marked UNREVIEWED: a judge on trial, or a coordination test)",
    )
    calibration_items: int | None = flag(
        None,
        "Phase 11 calibration responses the judge scores before its approvals "
        "count (default: all 20; 0: none, every approved post is published "
        "UNREVIEWED)",
        ge=0,
    )
    rubric: str = Field("1.1", description="the Phase 11 rubric the Editor's judge scores with")
    pass_r: float = Field(
        0.75, description="the judge's approvals count as reviews only at r >= this (Phase 11's rule)"
    )
    trace: bool = Field(
        True, description="each job a trace (job_tracing): spans to the local store (+ OTLP when configured)"
    )
    traces: str | None = Field(None, description="span store (None: $LAB_TRACES, else runs/traces/spans.jsonl)")
    defence: bool = Field(
        True, description="the Phase 15 defence (spotlighting + output check); False only to measure without it"
    )
    poll_s: float = Field(0.5, description="idle worker's wait between claims", gt=0)
    extra: dict[str, Any] = Field(default_factory=dict)

    @field_validator("editor")
    @classmethod
    def _editor(cls, value: str) -> str:

        if value not in EDITOR_MODES:
            raise ValueError(f"unknown Editor mode {value!r}; choose from {', '.join(EDITOR_MODES)}")
        return value

    @field_validator("site_url")
    @classmethod
    def _site_url(cls, value: str | None) -> str | None:

        return None if value is None else check_site_url(value)

    # --- the command line ------------------------------------------------------------------------
    @classmethod
    def flags(cls) -> dict[str, str]:
        """field name -> its flag, for the fields declared with ``flag()``, in declaration order."""
        return {
            name: "--" + name.replace("_", "-")
            for name, info in cls.model_fields.items()
            if "cli" in (info.json_schema_extra or {})
        }

    @classmethod
    def add_flags(cls, parser: argparse.ArgumentParser) -> None:
        """Add every flag to ``parser``: type, default and help from the field (a list field repeats)."""
        for name, option in cls.flags().items():
            info = cls.model_fields[name]
            cli = info.json_schema_extra["cli"]
            default = info.get_default(call_default_factory=True)
            if "env" in cli:
                default = os.environ.get(cli["env"]) or default
            kwargs: dict[str, Any] = {"default": default, "help": info.description}
            if "metavar" in cli:
                kwargs["metavar"] = cli["metavar"]
            kind = _scalar(info.annotation)
            if kind is list:
                kwargs["action"] = "append"
            elif kind is not str:
                kwargs["type"] = kind
            parser.add_argument(option, **kwargs)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> EngineSettings:
        """The settings of parsed flags; a ConfigError naming the flag of each value that is not valid."""
        flags = cls.flags()
        try:
            return cls(**{name: getattr(args, name) for name in flags})
        except ValidationError as err:
            raise ConfigError(
                "; ".join(f"{flags.get(str(e['loc'][0]), e['loc'][0])}: {e['msg']}" for e in err.errors())
            ) from None

    def argv(self) -> list[str]:
        """The flags that give a worker process these settings: each flag field that was set explicitly
        (``None`` left out: the flag's default). A set field with no flag is refused, never dropped."""
        flags = self.flags()
        lost = sorted(
            name
            for name in self.model_fields_set - set(flags)
            if getattr(self, name) != self.model_fields[name].get_default(call_default_factory=True)
        )
        if lost:
            raise ValueError(f"{', '.join(lost)}: no command-line flag carries these settings to a worker process")
        out: list[str] = []
        for name, option in flags.items():
            value = getattr(self, name)
            if name in self.model_fields_set and value is not None:
                for item in value if isinstance(value, list) else [value]:
                    out += [option, str(item)]
        return out

    # --- the Phase 16 exercise configs -------------------------------------------------------------
    @classmethod
    def defaults(cls, *names: str) -> dict[str, Any]:
        """The engine's own defaults of ``names`` (a profile that runs the engine as it ships)."""
        return {name: cls.model_fields[name].get_default(call_default_factory=True) for name in names}

    @classmethod
    def from_config(cls, config: BaseModel, **values: Any) -> EngineSettings:
        """The settings an exercise config holds (its fields made with ``setting()``), ``values`` on top."""
        held = {
            name: getattr(config, name)
            for name, info in type(config).model_fields.items()
            if (info.json_schema_extra or {}).get("engine_setting") == name
        }
        return cls(**{**held, **values})


def setting(name: str, default: Any = ...) -> Any:
    """An exercise config field that is ``EngineSettings.<name>``: its description and bounds, and its default
    unless ``default`` is given (an exercise's smaller run). ``EngineSettings.from_config`` reads it back."""
    info = EngineSettings.model_fields[name]
    bounds = {key: getattr(m, key) for m in info.metadata for key in _BOUNDS if hasattr(m, key)}
    value = info.get_default(call_default_factory=True) if default is ... else default
    return Field(value, description=info.description, json_schema_extra={"engine_setting": name}, **bounds)


def _scalar(annotation: Any) -> type:
    """``int`` of ``int | None``; ``list`` of ``list[str]``; the type itself otherwise."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    origin = typing.get_origin(annotation)
    if origin is list:
        return list
    return args[0] if args and origin is not None else annotation


class OutputBlocked(Exception):
    """The output check refused the post: the job is escalated to a human with the reason, never published."""


def worker_name() -> str:

    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


class Engine:
    """One engine = a job store, an LLM, a deploy target and settings; ``work`` runs a worker loop."""

    def __init__(
        self,
        store: JobStore,
        llm,
        deploy,
        settings: EngineSettings | None = None,
        on_event: Callable[[str, dict], None] | None = None,
        replier=None,
    ):
        self.store, self.deploy = store, deploy
        self.settings = settings or EngineSettings()
        self.tracing = None
        if self.settings.trace:
            self.tracing = tracing_for(self.settings.traces)
            llm = TracedLLM(llm)
        self.llm = StageMeter(llm)
        self.on_event = on_event or (lambda kind, info: None)
        self.replier = replier
        self._indexes: dict[str | None, Any] = {}
        self._judge = None
        self._calibration = None
        self._calibration_lock = threading.Lock()

    # --- shared pieces, built once per process ---------------------------------------------
    def index(self, corpus: str | None):

        key = corpus or self.settings.corpus
        if key not in self._indexes:
            self._indexes[key] = CorpusIndex(self.store.url, key)
        return self._indexes[key]

    @property
    def judge(self):
        if self._judge is None:
            self._judge = make_judge(self.llm, self.settings.rubric)
        return self._judge

    @property
    def calibration(self):
        """This run's calibration of the judge (``editor.calibrate``), measured once per engine, on first use."""
        with self._calibration_lock:
            if self._calibration is None:
                self._calibration = calibrate(self.judge, self.settings.calibration_items, self.settings.pass_r)
                self.on_event(
                    "judge_calibrated",
                    {
                        "r": self._calibration.r,
                        "n": self._calibration.n,
                        "passed": self._calibration.passed,
                        "note": self._calibration.note,
                    },
                )
            return self._calibration

    @property
    def site_key(self) -> str:
        return str(getattr(self.deploy, "site_dir", None) or getattr(self.deploy, "remote_url", "site"))

    # --- the worker loop ----------------------------------------------------------------------
    def work(
        self,
        worker: str | None = None,
        stop: threading.Event | None = None,
        job_id: str | None = None,
        exit_when_idle: bool = False,
    ) -> None:
        """Claim and run jobs until ``stop`` is set (or, with ``job_id``, until that job is terminal;
        with ``exit_when_idle``, until no job is claimable and none is running elsewhere)."""
        worker = worker or worker_name()
        stop = stop or threading.Event()
        while not stop.is_set():
            self.send_pending_replies()
            job = self.store.claim(worker, job_id)
            if job is not None:
                self.run_job(job)
                continue
            if job_id is not None and self.store.get(job_id).terminal:
                return
            if (
                exit_when_idle
                and not any(
                    n for s, n in self.store.count_by_state().items() if s not in ("published", "escalated", "failed")
                )
                and not (self.replier and self.store.unsent_replies())
            ):
                return  # idle: no job to run and no chat still owed its reply (a dead sender's included)
            stop.wait(self.settings.poll_s)

    def run_job(self, job: Job) -> Job:
        """Drive a claimed job from its current state to a terminal one (or until the lease is lost)."""
        lease = job.lease
        beating = threading.Event()
        heart = threading.Thread(target=self._heartbeat, args=(lease, beating), daemon=True)
        heart.start()
        self.on_event("claimed", {"job": job.id, "state": job.state, "attempt": job.attempts, "worker": lease.worker})
        state = job.state
        try:
            with self._trace(job):
                while state not in ("published", "escalated", "failed"):
                    state = self._stage(job, lease, state)
        except LeaseLost as exc:
            log.warning("%s", exc)
            self.on_event("lease_lost", {"job": job.id})
            return self.store.get(job.id)
        finally:
            beating.set()
            heart.join()
            if self.tracing is not None:
                self.tracing.flush()
        final = self.store.get(job.id)
        self.on_event(
            "finished", {"job": job.id, "state": final.state, "post_url": final.post_url, "error": final.error}
        )
        if final.state == "published":
            crash_point("after_publish")
        self.send_reply(final)
        return final

    def _trace(self, job: Job):

        return job_trace(job) if self.tracing is not None else nullcontext()

    def _heartbeat(self, lease: Lease, done: threading.Event) -> None:
        """Renew the lease every third of its length; stop once it was taken over (fencing does the rest)."""
        while not done.wait(self.store.lease_s / 3):
            try:
                if not self.store.renew(lease):
                    return
            except Exception as exc:  # noqa: BLE001 — a DB blip: the next beat tries again
                log.warning("lease renewal failed: %s", exc)

    def _stage(self, job: Job, lease: Lease, state: str) -> str:
        stages = {
            "researching": self._research,
            "writing": self._write,
            "editing": self._edit,
            "publishing": self._publish,
        }
        run_id = self.store.start_stage(lease, state, job.attempts)
        self.on_event("stage", {"job": job.id, "stage": state})
        self.llm.reset()
        started = time.perf_counter()
        try:
            if self.tracing is not None:
                with stage_span(state):
                    to_state, write, detail, delta = stages[state](job)
            else:
                to_state, write, detail, delta = stages[state](job)
        except LeaseLost:
            raise
        except OutputBlocked as exc:
            log.warning("job %s: %s", job.id, exc)
            self.store.finish(lease, "escalated", error=f"output check: {exc}"[:1000], run_id=run_id)
            return "escalated"
        except Exception as exc:  # noqa: BLE001 — any stage failure fails the job, recorded, not raised
            log.exception("job %s: stage %s failed", job.id, state)
            self.store.finish(lease, "failed", error=f"{state}: {type(exc).__name__}: {exc}"[:1000], run_id=run_id)
            return "failed"
        seconds = time.perf_counter() - started
        usage = dict(self.llm.usage)
        if state != "publishing":
            crash_point("mid_stage")
        self.store.complete_stage(
            lease,
            run_id,
            state,
            to_state,
            seconds=seconds,
            usage=usage,
            detail={**detail, "llm_calls": usage["calls"]},
            write=write,
            revisions_delta=delta,
        )
        if to_state not in ("published", "escalated", "failed"):
            crash_point("between_stages")
        self.on_event(
            "stage_done", {"job": job.id, "stage": state, "to": to_state, "seconds": seconds, **usage, **detail}
        )
        return to_state

    # --- the four stages: each returns (next state, write(conn, revisions), detail, revisions delta) --
    def _research(self, job: Job):
        evidence, hypothesis = self.index(job.corpus).research(
            job.topic, self.llm, k=self.settings.k, hyde_max_tokens=self.settings.hyde_max_tokens
        )
        if not evidence:
            raise RuntimeError("the corpus returned no evidence")
        rows = [e.to_dict() for e in evidence]

        def write(conn, revisions):
            self.store.write_evidence(conn, job.id, rows)

        return "writing", write, {"evidence": [e.chunk_id for e in evidence], "hypothesis": hypothesis[:300]}, 0

    def _evidence(self, job: Job):

        return [
            Evidence(e["n"], e["chunk_id"], e["source"], e["text"], e["score"]) for e in self.store.evidence(job.id)
        ]

    def _write(self, job: Job):

        revision = self.store.get(job.id).revisions
        reviews = self.store.reviews(job.id)
        feedback = feedback_for_writer(reviews[-1]) if revision > 0 and reviews else None
        draft = write_draft(
            self.llm,
            job.topic,
            self._evidence(job),
            feedback,
            self.settings.writer_max_tokens,
            defence=self.defence(job.id),
        )
        if not draft.body:
            raise RuntimeError("the Writer produced an empty draft")

        def write(conn, revisions):
            self.store.write_draft(conn, job.id, revisions, draft.title, draft.body, draft.coverage, draft.citations)

        return (
            "editing",
            write,
            {
                "revision": revision,
                "coverage": round(draft.coverage, 4),
                "coverage_model": round(draft.coverage_model, 4),
                "invalid_markers": draft.invalid_markers,
                "added_markers": draft.added_markers,
            },
            0,
        )

    def _edit(self, job: Job):

        revision = self.store.get(job.id).revisions
        draft = self.store.drafts(job.id)[-1]
        calibration = self.calibration
        self.llm.reset()  # calibrating (once per engine) is not this stage's cost
        decision = review(
            self.judge,
            job.topic,
            draft["body"],
            self._evidence(job),
            revision,
            self.settings.max_revisions,
            calibration,
            shadow=self.settings.editor == "shadow",
        )
        verdict = decision["verdict"]
        to_state = {"APPROVE": "publishing", "REJECT": "writing", "ESCALATE": "escalated"}[decision["action"]]

        def write(conn, revisions):
            self.store.write_review(conn, job.id, revisions, decision)

        detail = {
            "revision": revision,
            "verdict": verdict,
            "action": decision["action"],
            "scores": decision["scores"],
            "mean": decision["mean"],
            "judge_method": decision["method"],
            "reviewed": decision["reviewed"],
            "judge_calibration_r": calibration.r,
            "citations": decision["citations"],
        }
        return to_state, write, detail, 1 if to_state == "writing" else 0

    def _publish(self, job: Job):

        post = self.post_record(job.id)
        verdict = self.check(f"{post.title}\n\n{post.body_markdown}", job, post=True)
        if not verdict.allowed:
            raise OutputBlocked(verdict.reason)
        url = public_url(self.settings.site_url, post_path(post))

        def write(conn, revisions):
            self.store.lock_site(conn, self.site_key)  # publishers of one site one at a time (see lock_site)
            others = [PostRecord.from_dict(p) for p in self.store.published_posts_in(conn) if p["job_id"] != job.id]
            publish(post, others + [post], self.deploy)
            crash_point("publishing")  # files deployed, the transaction not committed
            self.store.write_publication(conn, job.id, post.slug, url, post.to_dict())

        return "published", write, {"slug": post.slug}, 0

    def post_record(self, job_id: str):
        """The PostRecord of a job, built from the store (deterministic: a re-publish renders the same)."""

        job = self.store.get(job_id)
        draft = self.store.drafts(job_id)[-1]
        evidence = {e["n"]: e for e in self.store.evidence(job_id)}
        cited = self.store.citations(job_id, draft["revision"])
        runs = [r for r in self.store.stage_runs(job_id) if r["status"] == "done"]
        costs = [r["cost_usd"] for r in runs]
        reviews = self.store.reviews(job_id)
        last = reviews[-1] if reviews else {}
        note = next((r for r in last.get("reasons", []) if r.startswith("APPROVE does not count")), "")
        return PostRecord(
            job_id=job.id,
            slug=make_slug(draft["title"], job.id),
            title=draft["title"],
            topic=job.topic,
            body_markdown=draft["body"],
            citations=[
                Citation(n, chunk_id, evidence[n]["source"], evidence[n]["text"]) for n, chunk_id in cited.items()
            ],
            revisions=[
                RevisionRecord(r["revision"] + 1, r["verdict"], dict(r["scores"]), list(r["reasons"])) for r in reviews
            ],
            trace_id=job.trace_id,
            tokens={"input": sum(r["tokens_in"] for r in runs), "output": sum(r["tokens_out"] for r in runs)},
            cost_usd=None if any(c is None for c in costs) else round(sum(costs), 6),
            created_at=job.created_at.isoformat(),
            model=self.llm.spec,
            reviewed=last.get("reviewed"),
            review_note=note,
        )

    # --- the Phase 15 defence (untrusted.py) ------------------------------------------------------
    def defence(self, job_id: str):

        return defence_for(job_id) if self.settings.defence else None

    def check(self, text: str, job: Job, trusted: tuple[str, ...] = (), post: bool = False):
        """The output check on text about to leave the engine, against the job's topic and evidence
        (``trusted``: what the engine itself wrote into it, such as the post's URL); a ``post`` must
        also hold only allowed markup (``untrusted.check_post``)."""

        defence = self.defence(job.id)
        if defence is None:
            return ALLOW
        evidence = [e["text"] for e in self.store.evidence(job.id)]
        if post:
            return check_post(text, job.topic, evidence, defence)
        return check_output(text, job.topic, evidence, defence, trusted)

    # --- chat replies -----------------------------------------------------------------------
    def send_reply(self, job: Job) -> None:
        """The job's chat reply, under a claim (``JobStore.take_reply``: at least once, one sender at
        a time, Telegram's message id recorded as the reply is marked sent)."""
        if self.replier is None or job.chat_id is None or not job.terminal:
            return
        token = self.store.take_reply(job.id)
        if token is None:  # sent, given up, or another sender's claim is live
            return

        reviews = self.store.reviews(job.id)
        text = reply_text(job, reviews[-1]["reviewed"] if reviews else None)
        crash_point("reply_sending")
        if not self.check(text, job, (job.post_url or "",)).allowed:  # e.g. a failure message quoting injected text
            text = WITHHELD.format(state=job.state, id=job.id)
        try:
            message_id = self.replier.send(job.chat_id, text)
        except Exception as exc:  # noqa: BLE001 — recorded; retried unless Telegram refused it for good
            retry = not getattr(exc, "permanent", False)
            self.store.reply_failed(job.id, token, str(exc)[:300], retry=retry)
            log.warning("job %s: Telegram reply failed (%s): %s", job.id, "will retry" if retry else "given up", exc)
            return
        if not self.store.reply_sent(job.id, token, message_id):
            log.warning("job %s: the reply's claim expired while it was sent: the chat may get it twice", job.id)

    def send_pending_replies(self) -> None:
        """Replies no one sent yet: a dead worker's (its job ended, or it claimed the reply, and the
        process died before recording it sent), or a failed try's whose claim has expired."""
        if self.replier is None:
            return
        for job_id in self.store.pending_replies():
            self.send_reply(self.store.get(job_id))


def deploy_for(site: str | Path):
    """A deploy target from a CLI/config value: a git remote (``git+URL``) or a directory."""

    site = str(site)
    if site.startswith("git+"):
        return GitDeploy(site[4:])
    return DirectoryDeploy(site)
