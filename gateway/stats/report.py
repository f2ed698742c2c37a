"""``omnirelay report``: the metrics of a period as a table, and a chart of volume and
response times per day (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

JSON = dict[str, Any]


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    if value < 90:
        return f"{value:.0f}s"
    if value < 5400:
        return f"{value / 60:.1f}m"
    return f"{value / 3600:.1f}h"


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.0f}%"


COLUMNS: tuple[tuple[str, Callable[[JSON], str]], ...] = (
    ("created", lambda g: str(g["conversations_created"])),
    ("open", lambda g: str(g["open_conversations"])),
    ("FRT med", lambda g: _seconds(g["first_response_time"]["median"])),
    ("FRT p90", lambda g: _seconds(g["first_response_time"]["p90"])),
    ("resp med", lambda g: _seconds(g["response_time"]["median"])),
    ("resp p90", lambda g: _seconds(g["response_time"]["p90"])),
    ("resol med", lambda g: _seconds(g["resolution_time"]["median"])),
    ("closed", lambda g: str(g["conversations_closed"])),
    ("one-touch", lambda g: _rate(g["one_touch_resolution_rate"])),
    ("auto res", lambda g: str(g["automatic_resolutions"])),
    ("msgs/conv", lambda g: "-" if g["messages_per_conversation"] is None
     else f"{g['messages_per_conversation']:.1f}"),
    ("contact", lambda g: "-" if g["contact_rate"] is None else f"{g['contact_rate']:.2f}"),
    ("CSAT", lambda g: "-" if g["csat"]["average_score"] is None
     else f"{g['csat']['average_score']:.1f} ({_rate(g['csat']['satisfaction_score'])})"),
)


def table(groups: list[JSON], label: str) -> str:
    """A plain-text table, one row per group (``label`` heads the key column)."""
    header = [label, *(name for name, _ in COLUMNS)]
    rows = [[str(g["key"]) if g["key"] is not None else "(all)",
             *(cell(g) for _, cell in COLUMNS)] for g in groups]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w)
                       in enumerate(zip(line, widths, strict=True)))
             for line in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def chart(days: list[JSON], path: Path, title: str) -> None:
    """Conversations created per day (bars) and median/p90 first response and response
    times (lines, minutes) on a second axis; the format follows the file's suffix."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [d["key"][5:] for d in days]  # MM-DD
    fig, volume = plt.subplots(figsize=(max(6.0, 0.45 * len(days) + 2), 4.5))
    try:
        volume.bar(labels, [d["conversations_created"] for d in days], color="#9ecae1",
                   label="conversations created")
        volume.set_ylabel("conversations created")
        volume.tick_params(axis="x", labelrotation=45)
        minutes = volume.twinx()

        def series(metric: str, stat: str) -> list[float]:
            return [float("nan") if d[metric][stat] is None else d[metric][stat] / 60
                    for d in days]
        minutes.plot(labels, series("first_response_time", "median"), "o-", color="#d95f02",
                     label="first response, median")
        minutes.plot(labels, series("first_response_time", "p90"), "o--", color="#d95f02",
                     alpha=0.6, label="first response, p90")
        minutes.plot(labels, series("response_time", "median"), "s-", color="#1b9e77",
                     label="response, median")
        minutes.set_ylabel("minutes")
        minutes.set_ylim(bottom=0)
        handles = volume.get_legend_handles_labels()
        more = minutes.get_legend_handles_labels()
        volume.legend(handles[0] + more[0], handles[1] + more[1], loc="upper left",
                      fontsize="small")
        volume.set_title(title)
        fig.tight_layout()
        fig.savefig(path)
    finally:
        plt.close(fig)
