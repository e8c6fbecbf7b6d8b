"""A self-contained HTML report: sections of text, tables and figures (PNG embedded as data URIs), one file.

The template is the project's own and rendered with autoescaping, so run data (dataset names, commands, paths) can
never inject markup. No script, no external resource: the file opens the same offline, in a browser or an archive.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jinja2 import Environment, select_autoescape

from orthopatch.io import write_text_atomic

_TEMPLATE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{{ title }}</title>
<style>
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 0.6em 0 1.2em; font-size: 0.85em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.5em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
.held { color: #176b2c; font-weight: 600; } .failed { color: #a11; font-weight: 600; }
.unmeasured { color: #777; } figure { margin: 1em 0; } img { max-width: 100%; border: 1px solid #eee; }
pre { background: #f6f6f6; padding: 0.6em; overflow-x: auto; font-size: 0.8em; }
</style></head><body>
<h1>{{ title }}</h1>
{% for p in intro %}<p>{{ p }}</p>{% endfor %}
{% for section in sections %}
<section id="{{ section.anchor }}"><h2>{{ section.title }}</h2>
{% for p in section.paragraphs %}<p>{{ p }}</p>{% endfor %}
{% for table in section.tables %}
<table>{% if table.caption %}<caption>{{ table.caption }}</caption>{% endif %}
<tr>{% for h in table.header %}<th>{{ h }}</th>{% endfor %}</tr>
{% for row in table.rows %}<tr>{% for cell in row %}<td{% if cell in verdicts %} class="{{ verdicts[cell] }}"{% endif %}>{{ cell }}</td>{% endfor %}</tr>
{% endfor %}</table>
{% endfor %}
{% for fig in section.figures %}<figure><img src="{{ fig.uri }}" alt="{{ fig.caption }}"><figcaption>{{ fig.caption }}</figcaption></figure>
{% endfor %}
{% for block in section.code %}<pre>{{ block }}</pre>{% endfor %}
</section>
{% endfor %}
</body></html>
"""
VERDICTS = {"held": "held", "did not hold": "failed", "not measured": "unmeasured", "partly": "unmeasured"}


@dataclass
class Figure:
    path: Path
    caption: str

    @property
    def uri(self) -> str:
        return "data:image/png;base64," + base64.b64encode(Path(self.path).read_bytes()).decode("ascii")


@dataclass
class Table:
    header: list[str]
    rows: list[list[Any]]
    caption: str = ""


@dataclass
class Section:
    title: str
    paragraphs: list[str] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)
    code: list[str] = field(default_factory=list)

    @property
    def anchor(self) -> str:
        return "".join(c if c.isalnum() else "-" for c in self.title.lower())


def cell(value: Any, percent: bool = False) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{100 * value:.1f}%" if percent else f"{value:.4g}"
    return str(value)


def render(title: str, sections: list[Section], intro: list[str] = ()) -> str:
    env = Environment(autoescape=select_autoescape(default=True, default_for_string=True))
    for section in sections:
        for figure in section.figures:
            if not Path(figure.path).is_file():
                raise FileNotFoundError(figure.path)
    return env.from_string(_TEMPLATE).render(title=title, intro=list(intro), sections=sections,
                                             verdicts=VERDICTS)


def write_report(path: str | Path, title: str, sections: list[Section], intro: list[str] = ()) -> Path:
    path = Path(path)
    write_text_atomic(path, render(title, sections, intro))
    return path
