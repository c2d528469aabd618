"""The static study page: one self-contained ``index.html`` (CSS and JS inlined, no network).

The template (``template/index.html``, ``reader.css``, ``reader.js``) ships as package data; the
study's pair list (ids, planes, image file names: never the sources) is inlined as JSON.
"""

from __future__ import annotations

import html
import json
from importlib import resources

TEMPLATE_PACKAGE = "medvol.study.reader"


def _template(name: str) -> str:
    return resources.files(TEMPLATE_PACKAGE).joinpath("template", name).read_text(encoding="utf-8")


def render_page(data: dict) -> str:
    """The page for ``data`` (``study``, ``mode``, ``question``, ``title``, ``pairs``)."""
    # "</" would end the inline <script> early; JSON allows the escaped slash.
    payload = json.dumps(data, indent=None, separators=(",", ":")).replace("</", "<\\/")
    page = _template("index.html")
    for marker, text in (("/*READER_CSS*/", _template("reader.css")), ("/*READER_JS*/", _template("reader.js")),
                         ("/*STUDY_DATA*/", payload), ("{{TITLE}}", html.escape(data.get("title", "Reader study")))):
        if marker not in page:
            raise RuntimeError(f"study page template lacks {marker}")  # a packaging bug, not user input
        page = page.replace(marker, text)
    return page
