"""One view of the app as a single self-contained HTML file: the images inline (data URIs), the
settings, the predictions, the scores shown and the app's version. It opens offline, in any
browser, and can be attached to a report (a finding about an uploaded image or model, which a
link cannot carry). Nothing here imports Streamlit.
"""

from __future__ import annotations

import base64
import html
import tomllib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from explainers.services.service import to_png

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


def app_version() -> str:
    """The app's version, from pyproject.toml ("unknown" where the file is not shipped)."""
    try:
        with PYPROJECT.open("rb") as file:
            return str(tomllib.load(file)["project"]["version"])
    except (OSError, KeyError, tomllib.TOMLDecodeError):
        return "unknown"


@dataclass
class Section:
    """A part of the report: a heading, paragraphs, a table (first row: the header) and pictures.

    Attributes:
        title: the heading.
        lines: paragraphs of plain text.
        table: rows of cells; the first row is the header.
        pictures: (caption, RGB uint8 image (H, W, 3)).
    """

    title: str
    lines: list[str] = field(default_factory=list)
    table: list[list[str]] = field(default_factory=list)
    pictures: list[tuple[str, np.ndarray]] = field(default_factory=list)


@dataclass
class ViewReport:
    """Everything one view shows, to write as a file.

    Attributes:
        title: the file's heading, e.g. "CAM Explorer · Chelsea the cat · efficientnet_lite0".
        settings: (name, value) pairs: image, model, layer, class, methods, display, edit.
        sections: the view's parts in page order.
        link: the link that reopens the view (for a sample), or None.
        version: the app's version.
        created: when the file was written (UTC, ISO 8601).
    """

    title: str
    settings: list[tuple[str, str]] = field(default_factory=list)
    sections: list[Section] = field(default_factory=list)
    link: str | None = None
    version: str = field(default_factory=app_version)
    created: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))

    def section(self, title: str) -> Section:
        """The section of this title, added at the end if new."""
        for section in self.sections:
            if section.title == title:
                return section
        self.sections.append(Section(title))
        return self.sections[-1]


def data_uri(image: np.ndarray) -> str:
    """An RGB uint8 image as a PNG data URI."""
    return "data:image/png;base64," + base64.b64encode(to_png(np.ascontiguousarray(image))).decode("ascii")


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 1200px; color: #222; padding: 0 1rem; }
h1 { font-size: 1.6rem; } h2 { font-size: 1.2rem; margin-top: 2rem; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 0.5rem 0; } td, th { border: 1px solid #ccc; padding: 0.2rem 0.6rem; text-align: left; }
.pictures { display: flex; flex-wrap: wrap; gap: 12px; }
figure { margin: 0; width: 240px; } figure img { width: 240px; height: auto; image-rendering: pixelated; }
figcaption { font-size: 0.85rem; color: #444; } .meta { color: #666; font-size: 0.85rem; }
a { overflow-wrap: anywhere; }
"""


def report_html(report: ViewReport) -> str:
    """The report as one HTML document with every image inline: no file or network access needed."""
    e = html.escape
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{e(report.title)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>{e(report.title)}</h1>",
        f'<p class="meta">Written by CAM Explorer {e(report.version)} on {e(report.created)}.',
    ]
    if report.link:
        parts.append(f' Reopen this view: <a href="{e(report.link)}">{e(report.link)}</a>')
    parts.append("</p><h2>Settings</h2><table>")
    parts += [f"<tr><th>{e(name)}</th><td>{e(value)}</td></tr>" for name, value in report.settings]
    parts.append("</table>")
    for section in report.sections:
        parts.append(f"<h2>{e(section.title)}</h2>")
        parts += [f"<p>{e(line)}</p>" for line in section.lines]
        if section.table:
            header, *rows = section.table
            parts.append("<table><tr>" + "".join(f"<th>{e(c)}</th>" for c in header) + "</tr>")
            parts += ["<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>" for row in rows]
            parts.append("</table>")
        if section.pictures:
            parts.append('<div class="pictures">')
            for caption, image in section.pictures:
                parts.append(
                    f'<figure><img src="{data_uri(image)}" alt="{e(caption)}" width="{image.shape[1]}" '
                    f'height="{image.shape[0]}"><figcaption>{e(caption)}</figcaption></figure>'
                )
            parts.append("</div>")
    parts.append("</body></html>")
    return "\n".join(parts)
