"""Writes the lineage report as JSON and as a self-contained HTML page (`nautilus audit report`: scripts/audit.py)."""

from __future__ import annotations

import json
from pathlib import Path

import jinja2


def _duration(s) -> str:
    s = float(s or 0)
    return f"{s / 3600:.1f} h" if s >= 3600 else f"{s / 60:.1f} min" if s >= 60 else f"{s:.0f} s"


# autoescape: every value of the report (descriptions, metadata, run tags) is text, never markup
TEMPLATES = jinja2.Environment(
    loader=jinja2.PackageLoader("nautilus_assets.audit"),
    autoescape=True,
    finalize=lambda v: "" if v is None else v,
    trim_blocks=True,
    lstrip_blocks=True,
)
TEMPLATES.filters["duration"] = _duration


def to_html(rep: dict) -> str:
    return TEMPLATES.get_template("lineage_audit.html.j2").render(rep=rep)


def write(rep: dict, out_dir: Path) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    j, h = out_dir / "lineage_audit.json", out_dir / "lineage_audit.html"
    j.write_text(json.dumps(rep, indent=1, default=str))
    h.write_text(to_html(rep))
    return j, h
