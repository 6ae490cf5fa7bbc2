"""Row builders shared by tests that write tables directly."""

from __future__ import annotations


def region_score_row(gid: str, train: str, fg: float, bg: float) -> dict[str, object]:
    """An ok `region_scores` row of scoring 's' for generated image `img-{gid}`."""
    return {
        "scoring_id": "s",
        "generated_image_id": f"img-{gid}",
        "train_image_id": train,
        "segmenter": "x",
        "metric": "msssim",
        "preset": "paper",
        "size": 64,
        "fg_score": fg,
        "bg_score": bg,
        "pair_score": (fg + bg) / 2,
        "degenerate_rule": "none",
        "status": "ok",
    }
