"""Sphinx extension of the book: the box that opens every chapter.

    ```{chapter-box}
    :model: SmolLM2-135M, embedded

    **You will learn** ... **You need** ...
    ```

The author writes what the reader will learn and needs to know (the directive's content) and
the model. The extension adds what it measures itself, never a typed number:

* the reading time: the words of the chapter's Markdown cells at 200 words a minute;
* the run time: ``metadata.papermill.duration`` of the executed notebook this page is built
  from (papermill writes it when it executes the chapter), and the CPU cores and GPU of the
  machine that executed it when ``tools/stamp_run.py`` recorded them (``make notebooks`` does).
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

from docutils import nodes
from docutils.parsers.rst import directives
from sphinx.util.docutils import SphinxDirective

WORDS_PER_MINUTE = 200


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    minutes, rest = divmod(seconds, 60)
    return f"{minutes} min {rest:02d} s"


def reading_minutes(markdown: str) -> int:
    """Minutes to read ``markdown`` (words outside code fences and directive options)."""
    text = re.sub(r"```.*?```", " ", markdown, flags=re.S)
    text = re.sub(r"^:\w[\w-]*:.*$", " ", text, flags=re.M)
    words = re.findall(r"[A-Za-z][A-Za-z'’-]*", text)
    return max(1, math.ceil(len(words) / WORDS_PER_MINUTE))


def run_line(notebook: dict[str, Any]) -> str:
    """The run-time line of an executed notebook (``nbformat`` JSON as a dict)."""
    meta = notebook.get("metadata", {})
    seconds = (meta.get("papermill") or {}).get("duration")
    if seconds is None:
        return "not measured (this page was not executed by papermill for this build)"
    run = meta.get("avss_run") or {}
    where = ""
    if run.get("cpus"):
        where = f" on {run['cpus']} CPU cores" + (f" and {run['gpu']}" if run.get("gpu") else
                                                  ", no GPU")
        if run.get("profile"):
            where += f", profile {run['profile']}"
    return f"{_duration(float(seconds))}{where} (measured when this page was executed for this build)"


class ChapterBox(SphinxDirective):
    has_content = True
    option_spec = {"model": directives.unchanged_required}

    def run(self) -> list[nodes.Node]:
        box = nodes.admonition(classes=["avss-chapter-box"])
        box += nodes.title(text="In this chapter")
        self.state.nested_parse(self.content, self.content_offset, box)
        source = Path(self.env.doc2path(self.env.docname))
        reading, running = "", ""
        if source.suffix == ".ipynb" and source.exists():
            notebook = json.loads(source.read_text(encoding="utf-8"))
            markdown = "\n".join("".join(c["source"]) if isinstance(c["source"], list) else c["source"]
                                 for c in notebook["cells"] if c["cell_type"] == "markdown")
            reading, running = f"about {reading_minutes(markdown)} min", run_line(notebook)
        else:
            reading = f"about {reading_minutes(source.read_text(encoding='utf-8'))} min"
        facts = nodes.field_list(classes=["avss-chapter-facts"])
        rows = [("Reading time", reading), ("Run time", running),
                ("Model", self.options.get("model", ""))]
        for name, value in rows:
            if not value:
                continue
            field = nodes.field()
            field += nodes.field_name(text=name)
            body = nodes.field_body()
            body += nodes.paragraph(text=value)
            field += body
            facts += field
        box += facts
        return [box]


def setup(app: Any) -> dict[str, Any]:
    app.add_directive("chapter-box", ChapterBox)
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}
