"""A real browser for checking the published site: Debian's headless Chromium, driven by its CLI.

Why a browser and not just the HTML files: what a reader sees is the DOM after the browser has
parsed the page (and would have run any script that slipped through escaping). ``--dump-dom``
prints that DOM; ``--screenshot`` renders it. No driver library (Selenium, Playwright) is needed
for this: two command-line flags and a stdlib HTML parser do it, and the Debian package is the
whole install (``apt-get install -y --no-install-recommends chromium fonts-dejavu-core``;
``make setup`` does it when it can).
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import tempfile
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
INSTALL_HINT = (
    "install it with `sudo apt-get install -y --no-install-recommends chromium fonts-dejavu-core` "
    "(Debian/Ubuntu; `make setup` does this when it runs as root or with sudo)"
)
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-extensions",
    "--disable-sync",
    "--mute-audio",
)


class BrowserError(RuntimeError):
    """Chromium could not load or render a page; names the page and the exit status."""


def find_chromium(name: str | None = None) -> str | None:
    """Path of the Chromium binary: ``name`` if given (a path or a command), else the usual command names."""
    for candidate in (name,) if name else CANDIDATES:
        path = shutil.which(candidate)
        if path:
            return path
    return None


class Chromium:
    """One headless Chromium binary with a private, throwaway profile (parallel runs never share one)."""

    def __init__(self, binary: str, timeout_s: float = 60.0):
        self.binary, self.timeout_s = binary, timeout_s
        self._profile = tempfile.TemporaryDirectory(prefix="chromium-profile-")

    def version(self) -> str:
        proc = subprocess.run([self.binary, "--version"], capture_output=True, text=True, timeout=self.timeout_s)
        return proc.stdout.strip() or proc.stderr.strip().splitlines()[-1]

    def _run(self, url: str, *flags: str) -> subprocess.CompletedProcess:
        cmd = [self.binary, *FLAGS, f"--user-data-dir={self._profile.name}", *flags, url]
        env = {**os.environ, "DBUS_SESSION_BUS_ADDRESS": "disabled:"}  # no desktop bus in a container
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=self.timeout_s, env=env)
        except subprocess.TimeoutExpired:
            raise BrowserError(f"chromium did not finish loading {url} within {self.timeout_s:.0f} s") from None
        if proc.returncode != 0:
            raise BrowserError(f"chromium exited {proc.returncode} loading {url}: {proc.stderr.strip()[-500:]}")
        return proc

    def dump_dom(self, page: Path) -> str:
        """The page's DOM as the browser built it, serialised."""
        return self._run(page.resolve().as_uri(), "--dump-dom").stdout

    def screenshot(self, page: Path, png: Path, width: int = 1200, height: int = 800) -> int:
        """Render the page to ``png``; returns its size in bytes."""
        png.parent.mkdir(parents=True, exist_ok=True)
        self._run(page.resolve().as_uri(), f"--screenshot={png}", f"--window-size={width},{height}")
        if not png.is_file() or png.stat().st_size == 0:
            raise BrowserError(f"chromium wrote no screenshot of {page} to {png}")
        return png.stat().st_size

    def close(self) -> None:
        self._profile.cleanup()


def png_size(png: Path) -> tuple[int, int]:
    """(width, height) from the PNG header; raises ValueError when the file is not a PNG."""
    head = png.read_bytes()[:24]
    if head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR":
        raise ValueError(f"{png} is not a PNG file")
    return struct.unpack(">II", head[16:24])


@dataclass
class Dom:
    """What a check needs from a dumped DOM: title, h1, links by class, element ids, anything executable."""

    title: str = ""
    h1: str = ""
    links: list[tuple[str, str]] = field(default_factory=list)  # (class, href)
    ids: set[str] = field(default_factory=set)
    scripts: int = 0  # <script> elements
    handlers: int = 0  # on* event-handler attributes
    js_urls: int = 0  # href/src starting with javascript:
    text: str = ""

    def hrefs(self, cls: str) -> list[str]:
        return [href for c, href in self.links if cls in c.split()]


class _DomParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.dom, self._in, self._text = Dom(), [], []

    def handle_starttag(self, tag, attrs):
        attrs = {k: v or "" for k, v in attrs}
        self.dom.scripts += tag == "script"
        self.dom.handlers += sum(k.startswith("on") for k in attrs)
        self.dom.js_urls += sum(attrs.get(k, "").strip().lower().startswith("javascript:") for k in ("href", "src"))
        if "id" in attrs:
            self.dom.ids.add(attrs["id"])
        if tag == "a" and "href" in attrs:
            self.dom.links.append((attrs.get("class", ""), attrs["href"]))
        if tag in ("title", "h1", "style"):
            self._in.append(tag)

    def handle_endtag(self, tag):
        if self._in and self._in[-1] == tag:
            self._in.pop()

    def handle_data(self, data):
        if "style" in self._in:
            return
        if "title" in self._in:
            self.dom.title += data
        if "h1" in self._in:
            self.dom.h1 += data
        self._text.append(data)

    def close(self):
        super().close()
        self.dom.title, self.dom.h1 = " ".join(self.dom.title.split()), " ".join(self.dom.h1.split())
        self.dom.text = " ".join(" ".join(self._text).split())


def parse_dom(html: str) -> Dom:
    parser = _DomParser()
    parser.feed(html)
    parser.close()
    return parser.dom
