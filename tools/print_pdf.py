"""Print the whole book to one PDF with headless Chromium, offline.

    python tools/print_pdf.py _build/html _build/pdf/avss-book.pdf

``make pdf`` builds the HTML edition and runs this. It joins the articles of every page, in
the order of ``_toc.yml``, into one page (``_build/html/_print/book.html``, which keeps the
site's styles, figures and vendored MathJax; Sphinx's own ``singlehtml`` builder cannot render
the notebooks' hidden cells), opens it from a local HTTP server on 127.0.0.1 (no request leaves
the machine), waits for MathJax and every image, and prints it with page numbers in the footer
and a bookmark per heading (Chrome DevTools ``Page.printToPDF``). Chromium comes from Debian
(``apt-get install chromium``), as for the browser test of the book.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import functools
import http.server
import json
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ARTICLE = re.compile(r'<article class="bd-article">(.*?)</article>', re.S)
CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "chromium", "chromium-browser", "google-chrome")
FOOTER = (
    '<div style="width:100%;font-size:8px;text-align:center;color:#555;">'
    '<span class="title"></span> &middot; page <span class="pageNumber"></span> of '
    '<span class="totalPages"></span></div>'
)
# Print layout: the article alone, full width; dropdowns (solutions, hidden code) stay closed.
PRINT_CSS = """
.bd-header, .bd-sidebar-primary, .bd-sidebar-secondary, .bd-footer, .bd-footer-article,
.header-article, .prev-next-area, .bd-header-announcement, .skip-link, .search-button,
.theme-switch-button, #pst-back-to-top, .headerlink, .toggle-button, .copybtn { display: none !important; }
.bd-main, .bd-content, .bd-article-container, .bd-page-width, .bd-container__inner {
  max-width: 100% !important; width: 100% !important; padding: 0 !important; margin: 0 !important; }
img { max-width: 100% !important; break-inside: avoid; }
pre { white-space: pre-wrap !important; overflow-wrap: anywhere; }  /* paper cannot scroll */
figure, table, .admonition { break-inside: avoid; }
.bd-main .bd-content .bd-article .avss-print-page h1:first-of-type { display: block !important; }
.avss-print-page { break-before: page; }
.avss-print-page:first-child { break-before: auto; }
"""


def toc_pages(toc: Path = REPO / "_toc.yml") -> list[str]:
    """The book's pages in reading order (``root``, then every part's chapters), as ``.html``
    paths relative to the built site."""
    import yaml

    spec = yaml.safe_load(toc.read_text(encoding="utf-8"))
    files = [spec["root"]]
    for part in spec.get("parts", []):
        files += [chapter["file"] for chapter in part.get("chapters", [])]
    return [re.sub(r"\.(md|ipynb)$", "", f) + ".html" for f in files]


def combine(html_dir: Path, pages: Sequence[str]) -> Path:
    """Write ``_print/book.html``: the first page's document with the articles of ``pages``
    joined in its ``<article>``. All pages lie one folder deep, as ``_print/`` does, so their
    relative links to ``_static`` and ``_images`` stay valid."""
    articles = []
    for page in pages:
        text = (html_dir / page).read_text(encoding="utf-8")
        if page.count("/") != 1:
            raise ValueError(f"{page}: the print edition expects pages one folder deep")
        match = ARTICLE.search(text)
        if match is None:
            raise ValueError(f'{page}: no <article class="bd-article"> in the built page')
        articles.append(f'<div class="avss-print-page">{match.group(1)}</div>')
    shell = (html_dir / pages[0]).read_text(encoding="utf-8")
    match = ARTICLE.search(shell)
    joined = shell[: match.start(1)] + "\n".join(articles) + shell[match.end(1) :]
    out = html_dir / "_print" / "book.html"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(joined, encoding="utf-8")
    return out


def find_chromium() -> str:
    for name in CHROMIUM_CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    raise SystemExit("print_pdf: Chromium not found; install it with `apt-get install chromium`")


@contextlib.contextmanager
def serve(directory: Path) -> Iterator[str]:
    """Serve ``directory`` on 127.0.0.1 (a free port) in a thread; yields the base URL."""
    handler = functools.partial(_QuietHandler, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


def _start(binary: str, profile: Path) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(
        [
            binary,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-default-apps",
            "--disable-extensions",
            "--mute-audio",
            f"--user-data-dir={profile}",
            "--remote-debugging-port=0",
            "about:blank",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        match = re.search(r"DevTools listening on (ws://\S+)", line)
        if match:
            return proc, match.group(1)
    proc.kill()
    raise SystemExit("print_pdf: Chromium did not start remote debugging")


async def _print(ws_url: str, url: str, timeout: float) -> tuple[bytes, list[str]]:
    """Open ``url`` in a tab, wait for MathJax and images, print; returns (PDF, external URLs)."""
    from tornado.websocket import websocket_connect

    ws = await websocket_connect(ws_url, max_message_size=1024 * 2**20)
    counter = 0
    external: list[str] = []

    async def send(method: str, params: dict | None = None, session: str | None = None) -> dict:
        nonlocal counter
        counter += 1
        message = {"id": counter, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        await ws.write_message(json.dumps(message))
        while True:
            raw = await asyncio.wait_for(ws.read_message(), timeout)
            if raw is None:
                raise RuntimeError("Chromium closed the DevTools connection")
            data = json.loads(raw)
            if data.get("method") == "Network.requestWillBeSent":
                request_url = data["params"]["request"]["url"]
                if not re.match(
                    r"(https?://(127\.0\.0\.1|localhost)[:/]|data:|blob:|about:)", request_url
                ):
                    external.append(request_url)
            if data.get("id") == counter:
                if "error" in data:
                    raise RuntimeError(f"{method}: {data['error']}")
                return data.get("result", {})

    try:
        target = (await send("Target.createTarget", {"url": "about:blank"}))["targetId"]
        session = (await send("Target.attachToTarget", {"targetId": target, "flatten": True}))[
            "sessionId"
        ]
        await send("Network.enable", session=session)
        await send("Page.enable", session=session)
        await send("Emulation.setEmulatedMedia", {"media": "print"}, session=session)
        await send("Page.navigate", {"url": url}, session=session)
        settle = """(async () => {
            for (let i = 0; i < 600 && document.readyState !== 'complete'; i++) {
                await new Promise(r => setTimeout(r, 100)); }
            const style = document.createElement('style');
            style.textContent = __CSS__;
            document.head.appendChild(style);
            for (const d of document.querySelectorAll('details')) { d.open = false; }
            document.title = document.title.split(' \u2014 ').pop();   // the book's title
            if (window.MathJax && MathJax.startup) { await MathJax.startup.promise; }
            await Promise.all(Array.from(document.images).map(
                img => { img.loading = 'eager'; return img.decode().catch(() => null); }));
            await document.fonts.ready;
            return document.querySelectorAll('mjx-container').length; })()""".replace(
            "__CSS__", json.dumps(PRINT_CSS)
        )
        await send(
            "Runtime.evaluate", {"expression": settle, "awaitPromise": True}, session=session
        )
        result = await send(
            "Page.printToPDF",
            {
                "printBackground": True,
                "displayHeaderFooter": True,
                "generateDocumentOutline": True,
                "generateTaggedPDF": True,  # bookmarks per heading
                "headerTemplate": "<div></div>",
                "footerTemplate": FOOTER,
                "paperWidth": 8.27,
                "paperHeight": 11.69,  # A4, inches
                "marginTop": 0.6,
                "marginBottom": 0.7,
                "marginLeft": 0.6,
                "marginRight": 0.6,
            },
            session=session,
        )
        return base64.b64decode(result["data"]), external
    finally:
        ws.close()


def print_pdf(
    html_dir: Path, out: Path, pages: Sequence[str] | None = None, timeout: float = 600
) -> list[str]:
    """Print the built site ``html_dir`` (its ``pages``, by default those of ``_toc.yml``) to
    ``out``; returns the URLs of requests that left the machine (none for the offline edition)."""
    binary = find_chromium()
    book = combine(html_dir, list(pages) if pages is not None else toc_pages())
    with (
        serve(html_dir) as base,
        tempfile.TemporaryDirectory(prefix="chromium-pdf-", ignore_cleanup_errors=True) as profile,
    ):
        proc, ws_url = _start(binary, Path(profile))
        try:
            data, external = asyncio.run(
                _print(ws_url, base + book.relative_to(html_dir).as_posix(), timeout)
            )
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_bytes(data)
    tmp.replace(out)
    return external


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("html", type=Path, help="the built site (e.g. _build/html)")
    parser.add_argument("out", type=Path, help="the PDF to write")
    args = parser.parse_args(argv)
    if not (args.html / "index.html").is_file():
        print(
            f"print_pdf: {args.html} holds no built site; build it first (make book)",
            file=sys.stderr,
        )
        return 2
    start = time.perf_counter()
    try:
        external = print_pdf(args.html, args.out)
    except (OSError, ValueError) as error:
        print(f"print_pdf: {error}", file=sys.stderr)
        return 2
    if external:
        print(
            f"print_pdf: {len(external)} request(s) left the machine: {external[:5]}",
            file=sys.stderr,
        )
        return 1
    pages = ""
    with contextlib.suppress(ImportError):
        from pypdf import PdfReader

        pages = f"{len(PdfReader(args.out).pages)} pages, "
    print(
        f"{args.out}: {pages}{args.out.stat().st_size / 2**20:.1f} MiB, printed in "
        f"{time.perf_counter() - start:.0f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
