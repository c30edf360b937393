"""Deploying the site: a directory, or a git remote — how static sites are actually shipped.

``publish(post, all_posts, deploy)`` renders what one post changes (its page, its audit page, the
index; ``site_builder.render_post_files``) and hands the files to a deploy target. It is idempotent per job:
the index holds one entry per job id, the post's file name comes from its slug, and rendering is
deterministic, so publishing the same job again — a retry after a crash, a duplicate Telegram
update — writes the same bytes: no second post, no duplicate entry, and no new git commit.

- ``DirectoryDeploy(site_dir)``: each file is written to a temp file beside it and renamed into
  place, post pages before the index, so a reader (or a crash) never sees half a page or an index
  entry whose page is missing; a failure part-way leaves every file already there intact.
- ``GitDeploy(remote_url, branch)``: a work copy (cloned, or reused and reset to the remote
  branch), the files written as above, then ``git add``/``commit``/``push`` with a fixed author —
  the way GitHub Pages, Netlify or any static host built from a repository is fed. Nothing
  changed means no commit; a commit whose push failed earlier is pushed on the next publish.
  Git runs as a subprocess with the user's and system git config ignored and prompts disabled,
  and a password in the remote URL never appears in an error or a returned location.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path, PurePosixPath
from typing import Protocol

from lab.results import redact
from phase16_capstone.site_builder import PostRecord, post_path, render_post_files

AUTHOR_NAME = "llm-systems-lab publisher"
AUTHOR_EMAIL = "publisher@llm-systems-lab.invalid"


class DeployError(RuntimeError):
    """A deploy target refused the files (bad path, git failure); names the file or the git command."""


class Deploy(Protocol):
    def deploy(self, files: Mapping[str, str], message: str) -> str: ...
    def location(self, relpath: str) -> str: ...


def _safe_relpath(relpath: str) -> PurePosixPath:
    path = PurePosixPath(relpath)
    if (
        path.is_absolute()
        or not path.parts
        or any(part in ("..", ".", "") or part.startswith(".") for part in path.parts)
    ):
        raise DeployError(f"refusing to write {relpath!r}: site paths must be relative, without '..' or hidden parts")
    return path


def _ordered(files: Mapping[str, str]) -> list[str]:
    """Pages first, the index last: an index entry never points at a page not written yet."""
    return sorted(files, key=lambda rel: (rel == "index.html", rel))


def write_atomic(path: Path, text: str) -> bool:
    """Temp file in the same folder, fsync, rename. False (nothing touched) when the content is the same."""
    data = text.encode("utf-8")
    if path.is_file() and path.read_bytes() == data:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return True


class DirectoryDeploy:
    """The site as a folder on disk (serve it with any static web server, or open it from file://)."""

    def __init__(self, site_dir: str | Path):
        self.site_dir = Path(site_dir).expanduser().resolve()
        self.changed: list[str] = []  # what the last deploy actually rewrote

    def deploy(self, files: Mapping[str, str], message: str = "") -> str:
        """Write ``files`` (relative path -> text); returns the site folder."""
        paths = {rel: self.site_dir / _safe_relpath(rel) for rel in files}  # validate all before writing any
        self.changed = [rel for rel in _ordered(files) if write_atomic(paths[rel], files[rel])]
        return str(self.site_dir)

    def location(self, relpath: str) -> str:
        return str(self.site_dir / _safe_relpath(relpath))


class GitDeploy:
    """The site as commits on a branch of a git remote (any URL git can push to; tests use a bare repo)."""

    def __init__(
        self, remote_url: str, branch: str = "main", workdir: str | Path | None = None, public_url: str | None = None
    ):
        if not re.fullmatch(r"[A-Za-z0-9._/-]+", branch) or branch.startswith(("-", "/")) or ".." in branch:
            raise DeployError(f"branch {branch!r} is not a plain branch name")
        self.remote_url, self.branch, self.public_url = remote_url, branch, public_url
        self.workdir = Path(workdir).expanduser().resolve() if workdir else Path(tempfile.mkdtemp(prefix="site-git-"))
        self.committed = False  # whether the last deploy made a new commit

    def _git(self, *args: str, check: bool = True, cwd: Path | None = None) -> subprocess.CompletedProcess:
        env = {
            **os.environ,
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_CONFIG_GLOBAL": os.devnull,
            "GIT_TERMINAL_PROMPT": "0",
            "GIT_AUTHOR_NAME": AUTHOR_NAME,
            "GIT_AUTHOR_EMAIL": AUTHOR_EMAIL,
            "GIT_COMMITTER_NAME": AUTHOR_NAME,
            "GIT_COMMITTER_EMAIL": AUTHOR_EMAIL,
        }
        proc = subprocess.run(
            ["git", "-c", "commit.gpgsign=false", *args],
            cwd=cwd or self.workdir,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if check and proc.returncode != 0:
            raise DeployError(redact(f"git {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()[-800:]}"))
        return proc

    def _remote_has_branch(self) -> bool:
        return bool(self._git("ls-remote", "--heads", "origin", f"refs/heads/{self.branch}").stdout.strip())

    def _checkout(self) -> None:
        """A work copy at the remote branch's tip (a fresh clone, or the kept one reset to it)."""
        if not (self.workdir / ".git").is_dir():
            self.workdir.mkdir(parents=True, exist_ok=True)
            self._git("init", "-q", cwd=self.workdir)
            self._git("remote", "add", "origin", self.remote_url)
        else:
            self._git("remote", "set-url", "origin", self.remote_url)
        if self._remote_has_branch():
            self._git("fetch", "-q", "origin", f"+refs/heads/{self.branch}:refs/remotes/origin/{self.branch}")
            self._git("checkout", "-q", "-B", self.branch, f"origin/{self.branch}")
            self._git("reset", "-q", "--hard", f"origin/{self.branch}")
        else:  # an empty remote, or one without this branch: the first publish creates it
            self._git("symbolic-ref", "HEAD", f"refs/heads/{self.branch}")

    def _unpushed(self) -> bool:
        if self._git("rev-parse", "--verify", "-q", "HEAD", check=False).returncode != 0:
            return False  # no commit at all yet
        if self._git("rev-parse", "--verify", "-q", f"refs/remotes/origin/{self.branch}", check=False).returncode != 0:
            return True
        return self._git("rev-parse", "HEAD").stdout != self._git("rev-parse", f"origin/{self.branch}").stdout

    def deploy(self, files: Mapping[str, str], message: str = "publish") -> str:
        """Write, commit (only when something changed) and push; returns the remote location."""
        self._checkout()
        DirectoryDeploy(self.workdir).deploy(files, message)
        self._git("add", "--", *files)
        self.committed = self._git("diff", "--cached", "--quiet", check=False).returncode != 0
        if self.committed:
            self._git("commit", "-q", "-m", message or "publish")
        if self.committed or self._unpushed():
            self._git("push", "-q", "origin", f"HEAD:refs/heads/{self.branch}")
            self._git("fetch", "-q", "origin", f"+refs/heads/{self.branch}:refs/remotes/origin/{self.branch}")
        return self.location("")

    def location(self, relpath: str) -> str:
        rel = str(_safe_relpath(relpath)) if relpath else ""
        if self.public_url:
            return self.public_url.rstrip("/") + "/" + rel
        return redact(f"{self.remote_url}#{self.branch}:{rel}")


def publish(post: PostRecord, all_posts: Iterable[PostRecord], deploy: Deploy) -> str:
    """Render and deploy one post; returns where its page is. Same job twice = same files, same page."""
    files = render_post_files(post, all_posts)
    deploy.deploy(files, f"publish {post.slug} (job {post.job_id})")
    return deploy.location(post_path(post))
