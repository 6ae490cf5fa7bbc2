"""`fbmem report`: a self-contained HTML report of FB-Mem labels with evidence cards and PNG plots.

Library entry points (imported lazily, so importing this package is cheap):

    from fbmem_data.report import build_report
    path = build_report(ws, "report.html", tau=0.8)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pathlib import Path

    from fbmem_data.report.builder import ReportSummary

__all__ = ["build_report", "build_report_summary"]


def build_report(*args: Any, **kwargs: Any) -> Path:
    """See fbmem_data.report.builder.build_report."""
    from fbmem_data.report.builder import build_report as _build

    return _build(*args, **kwargs)


def build_report_summary(*args: Any, **kwargs: Any) -> ReportSummary:
    """See fbmem_data.report.builder.build_report_summary."""
    from fbmem_data.report.builder import build_report_summary as _build

    return _build(*args, **kwargs)
