"""report.html: report.md as one self-contained page (the plots inlined as data URIs), so the report reads in
MLflow's artifact viewer, which renders HTML but not a Markdown file's relative image links."""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path

STYLE = """body{font:14px/1.45 system-ui,sans-serif;margin:1.5em auto;max-width:1200px;padding:0 1em;color:#1f2328}
table{border-collapse:collapse;margin:.6em 0}th,td{border:1px solid #d0d7de;padding:3px 8px;text-align:left}
th{background:#f6f8fa}tr:nth-child(even) td{background:#fbfbfc}code{background:#f3f4f6;padding:0 3px;border-radius:3px}
img{max-width:100%}h1,h2,h3{border-bottom:1px solid #eee;padding-bottom:.2em}"""
_IMG = re.compile(r'<img src="([^"]+)"')


def render_html(markdown: str, out_dir: Path, title: str) -> str:
    """The report's Markdown as HTML (CommonMark + tables), each local image inlined; a missing image keeps its
    link (the page still renders)."""
    from markdown_it import MarkdownIt

    body = MarkdownIt("commonmark", {"html": False}).enable("table").render(markdown)

    def inline(m: re.Match) -> str:
        src = html.unescape(m.group(1))
        p = out_dir / src
        if "/" in src or not p.is_file() or p.suffix.lower() != ".png":
            return m.group(0)
        return f'<img src="data:image/png;base64,{base64.b64encode(p.read_bytes()).decode()}"'

    body = _IMG.sub(inline, body)
    return (f'<!doctype html>\n<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{STYLE}</style></head>\n<body>\n{body}</body></html>\n")  # fmt: skip
