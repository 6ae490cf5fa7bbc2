"""`lab-colours`: does a lab generation still show the colours its prompt names? (utility plug-in)

Lab captions name an object and a background: descriptive captions ("a red star ... on a pink and
brown striped background") spell the colours out; a planted group's invented name ("the zorflar
emblem") names what its training images share (FM: the object; BM and template: the background;
VM: both). The intended colours come from the lab data set itself (same seed as the model).

The judge: the `lab` segmenter splits the image; every pixel is assigned the nearest of the lab's
12 palette colours; the object shows its colour when that colour covers at least `object_share` of
the object's pixels, the background shows each of its two colours when each covers at least
`background_share` of the background's pixels. value = shown / named (0..1).

Why colours and not shapes: on the lab's own drawings, as redrawn by the lab autoencoder, this judge
agrees with the truth far more often than the small shape classifiers we tried (docs/lab.md gives the
measured agreement), and colours are what an over-eager mitigation destroys first.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from fbmem_data.utility.base import UtilityInput, UtilityValue, check_items


def named_colours(dataset: Any) -> dict[str, dict[str, list[str]]]:
    """prompt text -> {"object": [colour], "background": [colour, colour]} (what the prompt names)."""
    out: dict[str, dict[str, list[str]]] = {}
    for prompt in dataset.prompts:
        specs = [dataset.images[k].spec for k in prompt.image_keys] or ([prompt.spec] if prompt.spec else [])
        if not specs:
            continue
        objects = {s["object"]["colour_a"] for s in specs}
        backgrounds = {(s["background"]["colour_a"], s["background"]["colour_b"]) for s in specs}
        named: dict[str, list[str]] = {}
        if len(objects) == 1:
            named["object"] = sorted(objects)
        if len(backgrounds) == 1:
            named["background"] = sorted(next(iter(backgrounds)))
        if named:
            out[prompt.text] = named
    return out


def palette_indices(pixels: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """(N, 3) uint8 pixels -> index of the nearest palette colour (Euclidean in RGB)."""
    d = ((pixels[:, None, :].astype(np.float32) - palette[None, :, :]) ** 2).sum(-1)
    return d.argmin(1)


class LabColourJudge:
    name = "lab-colours"
    metric = "lab colour match (share of named colours shown)"

    def __init__(
        self,
        device: str = "auto",
        dataset_seed: int | None = None,
        segmenter_weights: str | None = None,
        object_share: float = 0.2,
        background_share: float = 0.1,
        lab_model: str = "lab",
    ) -> None:
        """
        Args:
            device: torch device of the segmenter.
            dataset_seed: the lab data set whose prompts are judged (default: the lab model's).
            lab_model: the lab model (`lab`, `lab-v2`) whose data set's prompts are judged.
            segmenter_weights: lab segmenter weights (default: shipped).
            object_share, background_share: the least share of a part's pixels a named colour must cover.

        Raises:
            ModelNotFoundError: the lab segmenter weights are missing.
        """
        from fbmem_data.devices import resolve_device
        from fbmem_data.lab.dataset import COLOURS, LabConfig, make_lab_dataset
        from fbmem_data.lab.pipeline import (
            CONFIG_FILE,
            lab_weights_dir,
            read_weights_info,
            weights_lab_config,
        )
        from fbmem_data.lab.segmenter import LabSegmenter

        self.device = resolve_device(device)
        self.lab_model = lab_model
        weights = lab_weights_dir(lab_model)
        lab_config = weights_lab_config(read_weights_info(weights)) if (weights / CONFIG_FILE).is_file() else LabConfig()
        self.dataset_seed = lab_config.seed if dataset_seed is None else int(dataset_seed)
        self.segmenter = LabSegmenter(segmenter_weights, device=self.device)
        self.object_share = float(object_share)
        self.background_share = float(background_share)
        self.colour_names = list(COLOURS)
        self.palette = np.array([COLOURS[c] for c in self.colour_names], dtype=np.float32)
        self.named = named_colours(make_lab_dataset(self.dataset_seed, lab_config))

    def params(self) -> dict[str, Any]:
        params = {"dataset_seed": self.dataset_seed, "segmenter": self.segmenter.params(),
                  "object_share": self.object_share, "background_share": self.background_share, "version": 1}
        if self.lab_model != "lab":  # only when set: v1's utility ids stay the same
            params["lab_model"] = self.lab_model
        return params

    def _shares(self, pixels: np.ndarray) -> dict[str, float]:
        if len(pixels) == 0:
            return {}
        counts = np.bincount(palette_indices(pixels, self.palette), minlength=len(self.colour_names))
        return {self.colour_names[i]: round(float(c) / len(pixels), 4) for i, c in enumerate(counts) if c}

    def score(self, items: Sequence[UtilityInput]) -> list[UtilityValue]:
        check_items(items)
        known = [i for i, it in enumerate(items) if it.prompt_text in self.named]
        masks = self.segmenter.segment([items[i].image for i in known]) if known else []
        out: list[UtilityValue] = [
            UtilityValue(None, error=f"not a prompt of the lab data set (seed {self.dataset_seed})") for _ in items
        ]
        for i, mask in zip(known, masks, strict=True):
            img, named = items[i].image, self.named[items[i].prompt_text]
            fg = mask >= 0.5
            shares = {"object": self._shares(img[fg]), "background": self._shares(img[~fg])}
            shown = {}
            for part, colours in named.items():
                need = self.object_share if part == "object" else self.background_share
                for colour in colours:
                    shown[f"{part}:{colour}"] = shares[part].get(colour, 0.0) >= need
            value = sum(shown.values()) / len(shown)
            out[i] = UtilityValue(value, {"shown": shown, "shares": shares})
        return out


def make_lab_colour_judge(**kwargs: Any) -> LabColourJudge:
    return LabColourJudge(**kwargs)
