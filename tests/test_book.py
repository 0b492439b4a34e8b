"""Book tier: build the Jupyter Book from a temporary copy of the repository (notebooks executed
with small parameters), serve it on 127.0.0.1, and load every page in headless Chromium.

Checks: the build passes with ``-W -n --keep-going`` (no warning at all) and no built file
mentions ``PAPER.md``; in the browser, on every page at 1400x900 and at 390x844, every page
loads, every <img> decodes (naturalWidth > 0), nothing is logged as an error, no request leaves
localhost (the site must work offline), no request fails, MathJax typesets the formulas, no
element inside the article is wider than its container unless a scrolling container holds it,
every image in the article has alt text that is not a file name and a caption, no table cell
shows ``nan``, ``inf``, ``None`` or a float with six decimals, and the introduction's first screen
holds the verdict table. Screenshots of every page at both widths go to ``test-artifacts/book/``.

The browser is driven through the Chrome DevTools Protocol over a websocket (tornado's client,
installed with Jupyter), so no browser-automation package is needed. Chromium comes from Debian:
``apt-get install chromium``; the test installs it when running as root, and skips otherwise.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import unicodedata
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

# run_notebook (conftest.py): the session fixture of the notebook tier, each notebook executed
# once per test session.

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "test-artifacts" / "book"
CHROMIUM = "/usr/bin/chromium"
LOCAL_HOSTS = {"127.0.0.1", "localhost"}
LOCAL_SCHEMES = {"data", "blob", "about", "chrome-error"}
# The two widths every page is checked and photographed at: desktop and phone.
VIEWPORTS = {"desktop": (1400, 900, False), "phone": (390, 844, True)}
# Pages that must exist (and be looked at).
REQUIRED = ("book/intro.html", "notebooks/00_setup.html", "book/methods.html")
#: a page that only sends the reader on (Jupyter Book's root ``index.html``): checked by its
#: target, not rendered (the refresh can navigate away while the page is probed)
REDIRECT = re.compile(r'^<meta http-equiv="Refresh" content="0; url=([^"]+)" />\s*$', re.I)
# Layout and content checks run in the page (JavaScript); returns a JSON string.
LAYOUT_PROBE = r"""(() => {
  const article = document.querySelector('article') || document.querySelector('main');
  const out = {overflow: [], alt: [], caption: [], cells: [], verdictTop: null,
               viewport: [window.innerWidth, window.innerHeight]};
  if (!article) { return JSON.stringify(out); }
  const box = article.getBoundingClientRect();
  const scrolls = (el) => {
    for (let a = el.parentElement; a && a !== article.parentElement; a = a.parentElement) {
      const o = getComputedStyle(a).overflowX;
      if (o === 'auto' || o === 'scroll' || o === 'hidden') { return true; }
    }
    return false;
  };
  for (const el of article.querySelectorAll('*')) {
    const r = el.getBoundingClientRect();
    if (r.width === 0 || r.height === 0) { continue; }
    if (r.right > box.right + 2 && !scrolls(el)) {
      out.overflow.push(`${el.tagName.toLowerCase()}.${el.className}`.slice(0, 80)
                        + ` right ${Math.round(r.right)} > ${Math.round(box.right)}`);
    }
  }
  for (const img of article.querySelectorAll('img')) {
    const alt = (img.getAttribute('alt') || '').trim();
    if (!alt || /[\/\\]|\.(png|jpe?g|svg|gif)$/i.test(alt)) { out.alt.push(img.src + ' alt=' + alt); }
    const fig = img.closest('figure');
    if (!fig || !fig.querySelector('figcaption') || !fig.querySelector('figcaption').textContent.trim()) {
      out.caption.push(img.src);
    }
  }
  const bad = /(^|[^\w.])(nan|NaN|inf|-inf|None)([^\w]|$)|\d\.\d{6}(\D|$)/;
  for (const cell of article.querySelectorAll('td, th')) {
    const text = cell.textContent.trim();
    if (bad.test(text)) { out.cells.push(text.slice(0, 80)); }
  }
  const verdicts = article.querySelector('.avss-table table');
  if (verdicts) { out.verdictTop = verdicts.getBoundingClientRect().top + window.scrollY; }
  return JSON.stringify(out);
})()"""
# Repository paths the book build does not need (and the git-ignored ones).
COPY_IGNORE = shutil.ignore_patterns(
    ".git",
    ".venv",
    "_build",
    "test-artifacts",
    "student",
    "__pycache__",
    ".*_cache",
    "*.egg-info",
    "*.ipynb",
    ".whl",
    ".gl",
    ".device",
)


def _toc_notebooks() -> list[str]:
    """Stems of the notebooks listed in _toc.yml (entries ``file: notebooks/NAME``)."""
    text = (REPO / "_toc.yml").read_text()
    return re.findall(r"file:\s*notebooks/([\w.-]+?)(?:\.ipynb)?\s*$", text, flags=re.M)


def _ensure_chromium() -> str:
    if Path(CHROMIUM).exists():
        return CHROMIUM
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.skip(
            f"{CHROMIUM} not found and not root: install it with `apt-get install chromium`"
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (
        ["apt-get", "update"],
        ["apt-get", "install", "-y", "--no-install-recommends", "chromium"],
    ):
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
        if done.returncode != 0:
            pytest.fail(
                f"`{' '.join(cmd)}` failed; install chromium by hand:\n{done.stderr[-2000:]}"
            )
    return CHROMIUM


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def built_book(run_notebook, tmp_path_factory) -> Path:
    """Build the book from a copy of the repository; returns the ``_build/html`` directory."""
    copy = tmp_path_factory.mktemp("book") / "repo"
    shutil.copytree(REPO, copy, ignore=COPY_IGNORE)
    stems = _toc_notebooks()
    assert stems, "_toc.yml lists no notebook"
    for stem in stems:
        shutil.copy(run_notebook(stem), copy / "notebooks" / f"{stem}.ipynb")
    jupyter_book = Path(sys.executable).with_name("jupyter-book")
    start = time.perf_counter()
    done = subprocess.run(
        [str(jupyter_book), "build", str(copy), "-W", "-n", "--keep-going"],
        capture_output=True,
        text=True,
        timeout=900,
    )
    log = done.stdout + done.stderr
    print(f"book build: {time.perf_counter() - start:.1f} s")
    assert done.returncode == 0, f"jupyter-book build failed:\n{log[-6000:]}"
    assert "WARNING" not in log, f"the book build warned:\n{log[-6000:]}"
    return copy / "_build" / "html"


@pytest.fixture(scope="module")
def server(built_book) -> Iterator[str]:
    """Serve the built HTML on 127.0.0.1 with Python's http.server; yields the base URL."""
    port = _free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "http.server",
            str(port),
            "--bind",
            "127.0.0.1",
            "--directory",
            str(built_book),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}/"
    try:
        for _ in range(100):
            try:
                urllib.request.urlopen(base, timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        else:
            pytest.fail(f"http.server did not answer on {base}")
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=10)


class DevTools:
    """A minimal Chrome DevTools Protocol client over one websocket (flattened sessions)."""

    def __init__(self, ws) -> None:
        self.ws = ws
        self.next_id = 0
        self.events: list[dict] = []

    async def send(
        self,
        method: str,
        params: dict | None = None,
        session: str | None = None,
        timeout: float = 60,
    ) -> dict:
        self.next_id += 1
        call_id = self.next_id
        message = {"id": call_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        await self.ws.write_message(json.dumps(message))
        while True:
            data = await self._read(timeout)
            if data.get("id") == call_id:
                if "error" in data:
                    raise RuntimeError(f"{method}: {data['error']}")
                return data.get("result", {})
            self.events.append(data)

    async def wait_for(self, method: str, session: str, timeout: float = 60) -> dict:
        for i, event in enumerate(self.events):
            if event.get("method") == method and event.get("sessionId") == session:
                return self.events.pop(i)
        while True:
            data = await self._read(timeout)
            if data.get("method") == method and data.get("sessionId") == session:
                return data
            self.events.append(data)

    async def _read(self, timeout: float) -> dict:
        raw = await asyncio.wait_for(self.ws.read_message(), timeout)
        if raw is None:
            raise RuntimeError("Chromium closed the DevTools connection")
        return json.loads(raw)


def _start_chromium(binary: str, profile: Path) -> tuple[subprocess.Popen, str]:
    """Start headless Chromium with remote debugging; returns (process, browser websocket URL)."""
    proc = subprocess.Popen(
        [
            binary,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-default-apps",
            "--disable-extensions",
            "--mute-audio",
            f"--user-data-dir={profile}",
            "--remote-debugging-port=0",
            "--window-size=1280,900",
            "about:blank",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    lines = []
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        lines.append(line)
        match = re.search(r"DevTools listening on (ws://\S+)", line)
        if match:
            return proc, match.group(1)
    proc.kill()
    raise RuntimeError("Chromium did not start remote debugging:\n" + "".join(lines[-20:]))


async def _check_pages(ws_url: str, base: str, pages: list[str]) -> dict[str, dict]:
    """Load each page in a fresh tab; returns per page what went wrong (lists of strings)."""
    from tornado.websocket import websocket_connect

    ws = await websocket_connect(ws_url, max_message_size=256 * 2**20)
    cdp = DevTools(ws)
    report: dict[str, dict] = {}
    try:
        for page in pages:
            for view, (width, height, mobile) in VIEWPORTS.items():
                try:
                    report[f"{page}@{view}"] = await _check_page(
                        cdp, base, page, view, width, height, mobile
                    )
                except RuntimeError as error:
                    raise RuntimeError(f"{page} at {view} width: {error}") from error
    finally:
        ws.close()
    return report


def _shot_name(page: str, view: str) -> str:
    return page.removesuffix(".html").replace("/", "_") + f"-{view}.png"


async def _check_page(
    cdp: DevTools, base: str, page: str, view: str, width: int, height: int, mobile: bool
) -> dict:
    """Load ``page`` in a fresh tab of ``width`` x ``height``; returns what went wrong, its facts
    and its layout probe, and writes a screenshot of the first screen."""
    target = (await cdp.send("Target.createTarget", {"url": "about:blank"}))["targetId"]
    session = (await cdp.send("Target.attachToTarget", {"targetId": target, "flatten": True}))[
        "sessionId"
    ]
    for domain in ("Page", "Runtime", "Log", "Network"):
        await cdp.send(f"{domain}.enable", session=session)
    await cdp.send(
        "Emulation.setDeviceMetricsOverride",
        {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile},
        session=session,
    )
    cdp.events.clear()
    await cdp.send("Page.navigate", {"url": base + page}, session=session)
    await cdp.wait_for("Page.loadEventFired", session)
    # Wait for MathJax's typesetting and every image (lazy ones forced to load).
    settle = """(async () => {
        if (window.MathJax && MathJax.startup) { await MathJax.startup.promise; }
        await Promise.all(Array.from(document.images).map(
            img => { img.loading = 'eager'; return img.decode().catch(() => null); }));
        await document.fonts.ready;
        return true; })()"""
    await cdp.send(
        "Runtime.evaluate", {"expression": settle, "awaitPromise": True}, session=session
    )
    await asyncio.sleep(0.3)
    probe = """JSON.stringify({
        images: Array.from(document.images).map(i => [i.src, i.naturalWidth]),
        mathjax: document.querySelectorAll('mjx-container').length,
        math: document.querySelectorAll('.math').length,
        title: document.title})"""
    result = await cdp.send(
        "Runtime.evaluate", {"expression": probe, "returnByValue": True}, session=session
    )
    facts = json.loads(result["result"]["value"])
    layout = await cdp.send(
        "Runtime.evaluate", {"expression": LAYOUT_PROBE, "returnByValue": True}, session=session
    )
    if "value" not in layout.get("result", {}):
        raise RuntimeError(f"{page}: the layout probe failed: {layout.get('exceptionDetails')}")
    facts["layout"] = json.loads(layout["result"]["value"])
    shot = await cdp.send(
        "Page.captureScreenshot", {"format": "png", "captureBeyondViewport": False}, session=session
    )
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / _shot_name(page, view)).write_bytes(base64.b64decode(shot["data"]))
    # Drain what is still queued, then sort this tab's events.
    await cdp.send("Runtime.evaluate", {"expression": "1"}, session=session)
    events = [e for e in cdp.events if e.get("sessionId") == session]
    found = _problems(events, facts)
    for key in ("overflow", "alt", "caption", "cells"):
        found[key] = facts["layout"][key]
    cdp.events = [e for e in cdp.events if e.get("sessionId") != session]
    await cdp.send("Target.closeTarget", {"targetId": target})
    return found


def _problems(events: list[dict], facts: dict) -> dict:
    """Sort one tab's DevTools events into the kinds of failure the test reports."""
    out: dict = {"external": [], "failed": [], "console": [], "images": [], "facts": facts}
    for event in events:
        method, params = event.get("method"), event.get("params", {})
        if method == "Network.requestWillBeSent":
            url = params["request"]["url"]
            parts = urlsplit(url)
            if parts.scheme not in LOCAL_SCHEMES and parts.hostname not in LOCAL_HOSTS:
                out["external"].append(url)
        elif method == "Network.loadingFailed" and not params.get("canceled"):
            out["failed"].append(f"{params.get('type')}: {params.get('errorText')}")
        elif method == "Network.responseReceived" and params["response"]["status"] >= 400:
            out["failed"].append(f"{params['response']['status']} {params['response']['url']}")
        elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            args = [a.get("value", a.get("description", "")) for a in params.get("args", [])]
            out["console"].append(" ".join(map(str, args)))
        elif method == "Runtime.exceptionThrown":
            details = params["exceptionDetails"]
            out["console"].append(details.get("exception", {}).get("description", details["text"]))
        elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
            out["console"].append(f"{params['entry']['text']} ({params['entry'].get('url', '')})")
    out["images"] = [src for src, width in facts["images"] if not width]
    return out


@pytest.mark.book
def test_book_builds_and_renders_offline(built_book: Path, server: str) -> None:
    binary = _ensure_chromium()
    pages = sorted(
        p.relative_to(built_book).as_posix()
        for p in built_book.rglob("*.html")
        if "_static" not in p.parts and "_sources" not in p.parts
    )
    assert set(REQUIRED) <= set(pages), f"expected pages missing from the build: {pages}"
    redirects = {}
    for page in pages:
        if match := REDIRECT.match((built_book / page).read_text(encoding="utf-8")):
            redirects[page] = (Path(page).parent / match[1]).as_posix()
    assert {"index.html": "book/intro.html"}.items() <= redirects.items(), redirects
    assert set(redirects.values()) <= set(pages), f"a redirect to a missing page: {redirects}"
    pages = [page for page in pages if page not in redirects]
    cited = [
        p.relative_to(built_book).as_posix()
        for p in built_book.rglob("*")
        if p.is_file()
        and p.suffix in {".html", ".txt", ".js", ".ipynb", ".md"}
        and "PAPER.md" in p.read_text(encoding="utf-8", errors="replace")
    ]
    assert not cited, f"the built book mentions PAPER.md (a file outside the repository): {cited}"
    with tempfile.TemporaryDirectory(
        prefix="chromium-profile-", ignore_cleanup_errors=True
    ) as profile:
        proc, ws_url = _start_chromium(binary, Path(profile))
        try:
            report = asyncio.run(asyncio.wait_for(_check_pages(ws_url, server, pages), 900))
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
    bad = {page: {k: v for k, v in r.items() if v and k != "facts"} for page, r in report.items()}
    bad = {page: r for page, r in bad.items() if r}
    assert not bad, "pages with problems:\n" + json.dumps(bad, indent=2)
    setup = report["notebooks/00_setup.html@desktop"]["facts"]
    assert setup["images"], "the setup chapter shows no image"
    intro = report["book/intro.html@desktop"]["facts"]
    assert intro["math"] > 0 and intro["mathjax"] >= intro["math"], (
        f"MathJax typeset {intro['mathjax']} of {intro['math']} formulas on the introduction"
    )
    top, (_, height) = intro["layout"]["verdictTop"], intro["layout"]["viewport"]
    assert top is not None and top < height, (
        f"the verdict table starts at {top} px, below the introduction's first screen ({height} px)"
    )
    for page in pages:
        for view in VIEWPORTS:
            assert (ARTIFACTS / _shot_name(page, view)).stat().st_size > 10_000, (page, view)


def test_problems_sorts_devtools_events():
    """The event classifier flags what the browser test must catch (synthetic events)."""

    def request(url: str) -> dict:
        return {"method": "Network.requestWillBeSent", "params": {"request": {"url": url}}}

    events = [
        request("http://127.0.0.1:8000/book/intro.html"),
        request("data:image/png;base64,AAAA"),
        request("https://fonts.example.org/font.woff2"),
        {
            "method": "Network.responseReceived",
            "params": {"response": {"status": 404, "url": "http://127.0.0.1:8000/x.png"}},
        },
        {
            "method": "Network.responseReceived",
            "params": {"response": {"status": 200, "url": "http://127.0.0.1:8000/ok.png"}},
        },
        {"method": "Network.loadingFailed", "params": {"type": "Script", "errorText": "net::ERR"}},
        {"method": "Network.loadingFailed", "params": {"canceled": True}},
        {
            "method": "Runtime.consoleAPICalled",
            "params": {"type": "log", "args": [{"value": "hi"}]},
        },
        {
            "method": "Runtime.consoleAPICalled",
            "params": {"type": "error", "args": [{"value": "boom"}]},
        },
        {"method": "Log.entryAdded", "params": {"entry": {"level": "warning", "text": "meh"}}},
    ]
    facts = {"images": [["http://127.0.0.1:8000/a.png", 640], ["http://127.0.0.1:8000/x.png", 0]]}
    found = _problems(events, facts)
    assert found["external"] == ["https://fonts.example.org/font.woff2"]
    assert found["failed"] == ["404 http://127.0.0.1:8000/x.png", "Script: net::ERR"]
    assert found["console"] == ["boom"]
    assert found["images"] == ["http://127.0.0.1:8000/x.png"]


# ------------------------------------------------------------------ online edition and PDF
def _tool(name: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, REPO / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _jupyter_book(copy: Path, *args: str) -> str:
    jupyter_book = Path(sys.executable).with_name("jupyter-book")
    start = time.perf_counter()
    done = subprocess.run(
        [str(jupyter_book), "build", str(copy), "-W", "-n", "--keep-going", *args],
        capture_output=True,
        text=True,
        timeout=900,
    )
    log = done.stdout + done.stderr
    print(f"jupyter-book build {' '.join(args)}: {time.perf_counter() - start:.1f} s")
    assert done.returncode == 0, f"jupyter-book build {args} failed:\n{log[-6000:]}"
    assert "WARNING" not in log, f"the build {args} warned:\n{log[-6000:]}"
    return log


def _chapter_titles() -> dict[str, str]:
    """``{stem: title}`` of the chapters in _toc.yml, from the first heading of each source."""
    titles = {}
    for stem in _toc_notebooks():
        text = (REPO / "notebooks" / f"{stem}.md").read_text(encoding="utf-8")
        titles[stem] = re.search(r"^# (.+)$", text, re.M).group(1).strip()
    return titles


@pytest.mark.book
def test_online_edition_has_repository_link_and_launch_buttons(built_book: Path) -> None:
    """The online edition (book/online.yml) links every chapter to the repository, its source
    for editing, and launches it on Colab and Binder; the offline edition has none of these."""
    import yaml

    copy = built_book.parents[1]
    config = copy / "_build" / "_config.online.yml"
    _tool("edition_config").main(["online", str(config)])
    out = copy / "_online"
    _jupyter_book(copy, "--config", str(config), "--path-output", str(out))
    repository = yaml.safe_load((REPO / "book" / "online.yml").read_text())["repository"]
    url, branch = repository["url"], repository["branch"]
    slug = urlsplit(url).path.strip("/")
    for stem in _toc_notebooks():
        html = (out / "_build" / "html" / "notebooks" / f"{stem}.html").read_text(encoding="utf-8")
        offline = (built_book / "notebooks" / f"{stem}.html").read_text(encoding="utf-8")
        expected = {
            "repository link": f'href="{url}"',
            "edit this page": f"{url}/edit/{repository['edit_branch']}/notebooks/{stem}.md",
            "Colab": f"https://colab.research.google.com/github/{slug}/blob/{branch}/notebooks/{stem}.ipynb",
            "Binder": f"https://mybinder.org/v2/gh/{slug}/{branch}?urlpath=tree/notebooks/{stem}.ipynb",
            ".ipynb download": f"_sources/notebooks/{stem}.ipynb",
        }
        for what, needle in expected.items():
            assert needle in html, f"{stem}: the online edition lacks its {what} ({needle})"
        for what in ("repository link", "edit this page", "Colab", "Binder"):
            assert expected[what] not in offline, f"{stem}: the offline edition has a {what}"
        assert "colab.research.google.com" not in offline and "mybinder.org" not in offline


@pytest.mark.book
def test_pdf_has_every_chapter_with_its_figures(built_book: Path) -> None:
    """``make pdf`` on the test's build: every page in the order of _toc.yml printed by headless
    Chromium into one PDF. Its text holds every chapter title and page numbers, its outline a
    bookmark per chapter in order, every chapter's longest shown code line prints whole (code
    wraps rather than running off the page), and every chapter whose executed notebook shows a
    figure has at least one image on its pages. Printing requests nothing beyond 127.0.0.1."""
    from pypdf import PdfReader

    _ensure_chromium()
    copy = built_book.parents[1]
    pdf = copy / "_build" / "pdf" / "avss-book.pdf"
    start = time.perf_counter()
    external = _tool("print_pdf").print_pdf(built_book, pdf)
    assert not external, f"printing the PDF requested {external}"
    reader = PdfReader(pdf)
    print(
        f"pdf: {len(reader.pages)} pages, {pdf.stat().st_size / 2**20:.1f} MiB, printed in "
        f"{time.perf_counter() - start:.0f} s"
    )
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shutil.copy(pdf, ARTIFACTS / "avss-book.pdf")

    def squeeze(text: str) -> str:  # PDF text: ligatures (NFKC), line breaks that eat spaces
        return "".join(unicodedata.normalize("NFKC", text).split())

    text = " ".join((page.extract_text() or "") for page in reader.pages)
    flat = squeeze(text)
    titles = _chapter_titles()
    for title in titles.values():
        assert squeeze(title) in flat, f"the PDF's text lacks the chapter title {title!r}"
    assert re.search(r"\b1 of \d+\b", text), "no page numbers in the footer"
    hidden = {"remove-input", "hide-input", "remove-cell", "hide-cell", "injected-parameters"}
    for stem in titles:  # code wraps on paper: each chapter's longest shown code line prints whole
        cells = json.loads((copy / "notebooks" / f"{stem}.ipynb").read_text(encoding="utf-8"))
        shown = [
            line
            for cell in cells["cells"]
            if cell["cell_type"] == "code" and not hidden & set(cell["metadata"].get("tags", []))
            for line in "".join(cell["source"]).splitlines()
        ]
        longest = max(shown, key=len, default="")
        assert squeeze(longest) in flat, f"{stem}: the PDF cuts the code line {longest!r}"

    def outline(items, found):
        for item in items:
            if isinstance(item, list):
                outline(item, found)
            else:
                found.append((squeeze(item.title), reader.get_destination_page_number(item)))
        return found

    marks = outline(reader.outline, [])
    starts = {}
    for stem, title in titles.items():
        pages = [page for mark, page in marks if squeeze(title) in mark]
        assert pages, f"no bookmark for chapter {title!r} in the PDF outline"
        starts[stem] = min(pages)
    order = sorted(starts, key=starts.get)
    assert order == list(titles), f"chapters out of order in the PDF: {order}"
    ends = {
        stem: (starts[order[i + 1]] if i + 1 < len(order) else len(reader.pages))
        for i, stem in enumerate(order)
    }

    def images(obj) -> int:
        obj = obj.get_object()
        count = 0
        for xobject in (obj.get("/Resources", {}).get_object().get("/XObject", {}) or {}).values():
            xobject = xobject.get_object()
            if xobject.get("/Subtype") == "/Image":
                count += 1
            elif xobject.get("/Subtype") == "/Form":
                count += images(xobject)
        return count

    import json as _json

    for stem in titles:
        executed = _json.loads((copy / "notebooks" / f"{stem}.ipynb").read_text(encoding="utf-8"))
        has_figure = any(
            "image/png" in output.get("data", {})
            for cell in executed["cells"]
            for output in cell.get("outputs", [])
        )
        if not has_figure:
            continue
        count = sum(
            images(reader.pages[i]) for i in range(starts[stem], max(ends[stem], starts[stem] + 1))
        )
        assert count >= 1, f"chapter {titles[stem]!r} has figures but its PDF pages show no image"
