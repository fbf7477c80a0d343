"""A tiny document model rendered twice: Markdown (report.md) and self-contained HTML (report.html).

Blocks are plain tuples, so a report is data first and text second:
``("h1", text)``, ``("h2", text)``, ``("p", text)``, ``("table", header, rows)``,
``("img", relative_path, caption)``, ``("code", text)``, ``("md", markdown with pipe tables)``. The HTML embeds
images as base64 so
the file opens anywhere on its own.
"""
from __future__ import annotations

import base64
import html
import os
from pathlib import Path

CSS = """body{font-family:system-ui,sans-serif;max-width:70em;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #bbb;padding:.25em .6em;text-align:left}
th{background:#f0f0f0}img{max-width:48%;margin:.3em;border:1px solid #ddd;vertical-align:top}
figure{display:inline-block;margin:0;width:48%}figure img{max-width:100%}figcaption{font-size:.85em;color:#555}
pre{background:#f6f6f6;padding:.6em;overflow-x:auto}.fail{color:#b00;font-weight:bold}.ok{color:#070}"""


def fmt(value) -> str:
    """Format a figure for a table: floats to 4 significant digits, lists shortened."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        inner = ", ".join(fmt(v) for v in value[:6])
        return f"[{inner}{', …' if len(value) > 6 else ''}]"
    return str(value)


def to_markdown(blocks) -> str:
    out = []
    for block in blocks:
        kind = block[0]
        if kind == "h1":
            out.append(f"# {block[1]}\n")
        elif kind == "h2":
            out.append(f"## {block[1]}\n")
        elif kind == "h3":
            out.append(f"### {block[1]}\n")
        elif kind == "p":
            out.append(f"{block[1]}\n")
        elif kind == "code":
            out.append(f"```\n{block[1]}\n```\n")
        elif kind == "md":
            out.append(f"{block[1].strip()}\n")
        elif kind == "table":
            header, rows = block[1], block[2]
            lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            lines += ["| " + " | ".join(fmt(c).replace("|", "\\|") for c in row) + " |" for row in rows]
            out.append("\n".join(lines) + "\n")
        elif kind == "img":
            out.append(f"![{block[2]}]({block[1]})\n")
        else:
            raise ValueError(f"unknown block kind {kind!r}")
    return "\n".join(out)


def to_html(blocks, base_dir: Path | str, title: str = "jaxcalc report") -> str:
    base_dir = Path(base_dir)
    body = []
    for block in blocks:
        kind = block[0]
        if kind in ("h1", "h2", "h3"):
            body.append(f"<{kind}>{html.escape(block[1])}</{kind}>")
        elif kind == "p":
            body.append(f"<p>{_inline(block[1])}</p>")
        elif kind == "code":
            body.append(f"<pre>{html.escape(block[1])}</pre>")
        elif kind == "md":
            body.append(_markdown_fragment_to_html(block[1]))
        elif kind == "table":
            header, rows = block[1], block[2]
            head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
            trs = "".join("<tr>" + "".join(f"<td>{html.escape(fmt(c))}</td>" for c in row) + "</tr>" for row in rows)
            body.append(f"<table><tr>{head}</tr>{trs}</table>")
        elif kind == "img":
            path = base_dir / block[1]
            data = base64.b64encode(path.read_bytes()).decode() if path.exists() else ""
            body.append(f'<figure><img alt="{html.escape(block[2])}" src="data:image/png;base64,{data}">'
                        f"<figcaption>{html.escape(block[2])}</figcaption></figure>")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{CSS}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


def _markdown_fragment_to_html(text: str) -> str:
    """Pipe tables become ``<table>``; other lines become paragraphs (enough for experiment tables)."""
    out, table = [], []

    def flush():
        if table:
            cells = [[c.strip() for c in row.strip().strip("|").split("|")] for row in table
                     if not set(row.replace("|", "").strip()) <= set("-: ")]
            head = "".join(f"<th>{_inline(c)}</th>" for c in cells[0])
            rows = "".join("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in r) + "</tr>" for r in cells[1:])
            out.append(f"<table><tr>{head}</tr>{rows}</table>")
            table.clear()

    for line in text.strip().splitlines():
        if line.strip().startswith("|"):
            table.append(line)
        else:
            flush()
            if line.strip():
                out.append(f"<p>{_inline(line)}</p>")
    flush()
    return "\n".join(out)


def _inline(text: str) -> str:
    """Escape text, keeping `code` spans and **bold** readable."""
    parts = html.escape(text).split("`")
    parts = [f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts)]
    out = "".join(parts)
    bold = out.split("**")
    return "".join(f"<b>{p}</b>" if i % 2 else p for i, p in enumerate(bold))


def write_report(blocks, out_dir: Path | str, name: str = "report") -> tuple[Path, Path]:
    """Write ``name.md`` and ``name.html`` into ``out_dir`` (atomically); return both paths."""
    out_dir = Path(out_dir)
    paths = []
    for suffix, text in ((".md", to_markdown(blocks)), (".html", to_html(blocks, out_dir))):
        path = out_dir / f"{name}{suffix}"
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        tmp.write_text(text)
        os.replace(tmp, path)
        paths.append(path)
    return paths[0], paths[1]


def image_paths(blocks) -> list[str]:
    return [b[1] for b in blocks if b[0] == "img"]
