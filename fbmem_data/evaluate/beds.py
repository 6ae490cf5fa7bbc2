"""The built-in test beds of `fbmem eval`: images with known FB-Mem truth, each built from a seed.

A bed is a set of training images and a list of cases (generated images) with their truth label and the
training image(s) the truth refers to. Nothing is hand-picked: which photos, which degradations, which
regions, which scenes all come from the bed's seed.

- `planted`: fbmem's synthetic scenes (textured objects on textured backgrounds, 256 px), 8 per label,
  mild noise + JPEG 90 on every generated image.
- `real-photos`: the sample photographs scikit-image ships (a test extra: `pip install fbmem[test]`),
  split by the seed into training photos and unrelated photos. VM = each training photo resized to a
  512 square and degraded by one family of `degrade.FAMILIES` (two copies each, every family used
  twice); FM = the training photo's object region (its binarised saliency mask, dilated) pasted at the
  same place onto an unrelated photo; BM = the reverse: the training photo with that region filled by
  an unrelated photo's pixels; NM = the unrelated photos themselves (JPEG).

Beds are plug-ins (entry-point group `fbmem.beds`): each names a factory called as
`factory(seed, small=..., cache_dir=..., device=...)` that returns a Bed. The lab contributes its own
(`lab`, fbmem_data/lab/bed.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fbmem_data import plugins
from fbmem_data.errors import InputError

#: the photos of scikit-image's data directory used by `real-photos` (natural photographs only: no
#: charts, documents, binary or synthetic images); which are training photos is decided by the seed.
SKIMAGE_PHOTOS = (
    "astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png", "hubble_deep_field.jpg",
    "ihc.png", "retina.jpg", "camera.png", "coins.png", "moon.png", "brick.png", "grass.png", "gravel.png",
    "clock_motion.png",
)  # fmt: skip
PHOTO_SIZE = 512


@dataclass
class Case:
    """One generated image with its truth.

    truth: VM | FM | BM | NM. sources: the training images the truth refers to (the copied photo, the
    photo whose object or background is reused; a lab group's images); empty for NM.
    region: for composites, the boolean region taken from `sources[0]` (FM) or replaced in it (BM).
    """

    key: str
    rgb: np.ndarray
    truth: str
    sources: tuple[str, ...] = ()
    note: str = ""
    region: np.ndarray | None = None
    donor: str | None = None  # the unrelated photo a composite's other part comes from


@dataclass
class Bed:
    name: str
    seed: int
    train: dict[str, np.ndarray]
    cases: list[Case]
    segmenter: str | None = None  # segmenter this bed is scored with regardless of the configuration
    size: int | None = None  # comparison size this bed is scored at regardless of the configuration
    lenient: bool = False  # lab rule: FM or VM counts for FM, BM or VM for BM (the demo's targets)
    targets: dict[str, float] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)  # what the truth checks need (donor photos ...)


def bed_names() -> list[str]:
    """The test beds `fbmem eval` knows (every `fbmem.beds` plug-in), sorted; no bed module is imported."""
    return plugins.names(plugins.TEST_BEDS)


def check_bed_names(names: Sequence[str]) -> None:
    """Raises InputError naming the known beds when one of `names` is not a bed."""
    known = bed_names()
    for name in names:
        if name not in known:
            raise InputError(f"unknown test bed {name!r}", hint=f"one of {', '.join(known)}")


def make_bed(
    name: str, seed: int = 0, *, small: bool = False, cache_dir: Path | None = None, device: str = "cpu"
) -> Bed:
    """Build bed `name` from `seed`.

    Args:
        name: a `fbmem.beds` plug-in.
        seed: the bed's seed (what is drawn: photos, degradations, scenes, generation seeds).
        small: a few cases per label (tests).
        cache_dir: where a bed may cache what is slow to make (generations).
        device: torch device for a bed that runs a model.

    Returns:
        The bed.

    Raises:
        InputError: an unknown bed, or what the bed needs is missing.
    """
    check_bed_names([name])
    bed = plugins.create(plugins.TEST_BEDS, name, seed=seed, small=small, cache_dir=cache_dir, device=device)
    if not isinstance(bed, Bed):
        raise InputError(f"test bed plug-in {name!r} returned {type(bed).__name__}, not a Bed")
    return bed


def make_planted_bed(seed: int = 0, *, small: bool = False, cache_dir: Path | None = None, device: str = "cpu") -> Bed:
    """The `planted` bed's factory (cache_dir and device are not needed)."""
    del cache_dir, device
    return planted_bed(seed, per_label=2 if small else 8)


def make_real_photos_bed(
    seed: int = 0, *, small: bool = False, cache_dir: Path | None = None, device: str = "cpu"
) -> Bed:
    """The `real-photos` bed's factory (cache_dir and device are not needed)."""
    del cache_dir, device
    return real_photos_bed(seed, small=small)


# ---------------------------------------------------------------- planted


def planted_bed(seed: int = 0, per_label: int = 8, size: int = 256) -> Bed:
    """Planted scenes; case i of a label alternates object areas 12% / 35%."""
    from fbmem_data.evaluate.degrade import jpeg
    from fbmem_data.testing.scenes import planted_pair, to_uint8

    train: dict[str, np.ndarray] = {}
    cases: list[Case] = []
    for li, truth in enumerate(("VM", "FM", "BM", "NM")):
        for i in range(per_label):
            case_seed = 100_000 + seed * 1000 + li * 100 + i  # disjoint from the seeds the unit tests use
            pp = planted_pair(case_seed, truth, size=size, area=(0.12, 0.35)[i % 2], noise=0.01)
            tkey = f"train-{truth.lower()}{i:02d}"
            train[tkey] = to_uint8(pp.train)
            gen = jpeg(to_uint8(pp.generated), 90)
            # region: FM: the shared object; BM: where the two objects lie (the rest is the shared background)
            region = {"FM": pp.train_mask > 0.5, "BM": (pp.train_mask > 0.5) | (pp.generated_mask > 0.5)}.get(
                truth
            )
            cases.append(
                Case(
                    f"{truth.lower()}{i:02d}",
                    gen,
                    truth,
                    () if truth == "NM" else (tkey,),
                    f"seed {case_seed}, area {(0.12, 0.35)[i % 2]:.0%}",
                    region,
                )
            )
    return Bed("planted", seed, train, cases)


# ---------------------------------------------------------------- real photos


def skimage_photo_dir() -> Path:
    try:
        import skimage.data
    except ImportError as exc:
        raise InputError(
            "the real-photos test bed needs scikit-image's sample photos",
            hint="pip install 'fbmem[test]' (or scikit-image), or leave the bed out: --bed lab --bed planted",
        ) from exc
    return Path(skimage.data.__file__).parent


def load_photo(name: str) -> np.ndarray:
    """A bundled scikit-image photo as uint8 RGB (grey photos are repeated over three channels)."""
    from PIL import Image

    path = skimage_photo_dir() / name
    if not path.is_file():
        raise InputError(
            f"scikit-image does not ship {name} in {path.parent}", hint="install scikit-image >= 0.21"
        )
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def object_region(rgb: np.ndarray) -> np.ndarray:
    """The photo's object region: its saliency mask at 0.5, dilated by 2% of the side; a centred
    ellipse of 25% when the mask covers less than 5% or more than 60% of the photo."""
    import cv2

    from fbmem_data.segment.saliency import SaliencySegmenter

    mask = SaliencySegmenter().segment([rgb])[0] >= 0.5
    share = float(mask.mean())
    h, w = mask.shape
    if not 0.05 <= share <= 0.6:
        region = np.zeros((h, w), np.uint8)
        r = np.sqrt(0.25 / np.pi)
        cv2.ellipse(region, (w // 2, h // 2), (int(r * w), int(r * h)), 0, 0, 360, 1, -1)
        return region.astype(bool)
    k = max(3, int(0.02 * min(h, w)) * 2 + 1)
    return cv2.dilate(mask.astype(np.uint8), np.ones((k, k), np.uint8)).astype(bool)


def real_photos_bed(seed: int = 0, small: bool = False) -> Bed:
    from fbmem_data.evaluate.degrade import FAMILIES, degrade, jpeg, square

    rng = np.random.default_rng(seed)
    names = [SKIMAGE_PHOTOS[i] for i in rng.permutation(len(SKIMAGE_PHOTOS))]
    n_train = 3 if small else 8
    train_names, other_names = names[:n_train], names[n_train:]
    if small:
        other_names = other_names[:3]
    photos = {n.rsplit(".", 1)[0]: square(load_photo(n), PHOTO_SIZE) for n in train_names + other_names}
    train = {n.rsplit(".", 1)[0]: photos[n.rsplit(".", 1)[0]] for n in train_names}
    others = [n.rsplit(".", 1)[0] for n in other_names]
    cases: list[Case] = []
    families = [f for f in FAMILIES if not (small and f == "vae")]
    copies = 1 if small else 2
    for i, key in enumerate(train):
        for j in range(copies):
            family = families[(i * copies + j) % len(families)]
            img, note = degrade(photos[key], family, np.random.default_rng([seed, i, j]))
            cases.append(Case(f"vm-{key}-{j}", img, "VM", (key,), note))
    for key in train:
        region = object_region(photos[key])
        r3 = region[..., None]
        bg_donor = others[int(rng.integers(len(others)))]
        fm = np.where(r3, photos[key], photos[bg_donor])
        cases.append(
            Case(
                f"fm-{key}",
                jpeg(fm, 90),
                "FM",
                (key,),
                f"object of {key} on {bg_donor}, {region.mean():.0%}",
                region,
                bg_donor,
            )
        )
        fill_donor = others[int(rng.integers(len(others)))]
        bm = np.where(r3, photos[fill_donor], photos[key])
        cases.append(
            Case(
                f"bm-{key}",
                jpeg(bm, 90),
                "BM",
                (key,),
                f"{key} with its object region from {fill_donor}",
                region,
                fill_donor,
            )
        )
    for key in others:
        cases.append(Case(f"nm-{key}", jpeg(photos[key], 90), "NM", (), "an unrelated photo (jpeg q90)"))
    cases.sort(key=lambda c: ("VM", "FM", "BM", "NM").index(c.truth))
    return Bed("real-photos", seed, train, cases, extra={"photos": photos})
