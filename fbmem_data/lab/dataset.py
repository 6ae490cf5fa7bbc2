"""The lab's synthetic data set: 64x64 images of one object over a background, with planted memorization.

Every image is drawn from a seeded numpy generator, so the same seed gives identical bytes (and so
identical image ids). The planted groups follow the FB-Mem taxonomy:

- VM: one image, duplicated `vm_repeats` times under its own caption (verbatim memorization);
- FM: one object instance (same shape, colours, pose, position) over many different backgrounds,
  all under one caption naming the object with an invented token;
- BM: one background under many different objects, one caption naming the background;
- template: one layout (background, shape, position) whose object colour/texture varies (Webster's
  template memorization);
- unique: images seen once, each under its own descriptive caption (the non-memorized control);
- control: held-out descriptive prompts that are never trained.

Captions of the planted groups use invented words ("zorvex") so the text encoder gives each group
its own identity; descriptive captions use a small shared vocabulary of colours, shapes and
backgrounds.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass, field

import numpy as np

IMAGE_SIZE = 64
GROUPS = ("VM", "FM", "BM", "template", "unique", "control")
# Prompt sets, so that NeMo's set-wise steps apply directly: statistics and calibration over the
# non-memorized `lab-unique` captions, localization over the planted `lab-memorized` ones.
MEMORIZED_SET = "lab-memorized"  # VM, FM, BM and template groups
UNIQUE_SET = "lab-unique"  # captions of images seen once
CONTROL_SET = "lab-control"  # held-out captions, never trained

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (240, 210, 40),
    "orange": (245, 140, 30),
    "purple": (140, 50, 180),
    "pink": (240, 120, 180),
    "cyan": (40, 200, 210),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
    "brown": (130, 80, 40),
    "grey": (128, 128, 128),
}
SHAPES = ("circle", "square", "triangle", "star", "ring", "cross", "diamond", "heart", "hexagon", "letter")
FILLS = ("solid", "striped", "checkered", "dotted", "gradient")
BACKGROUNDS = ("gradient", "striped", "checkered", "cloudy", "dotted", "radial", "plaid")
LETTERS = "AEFGHKMRSWXZ"
SIZE_WORDS = ((0.0, 0.28, "small"), (0.28, 0.5, ""), (0.5, 1.01, "large"))

# Invented words that name planted groups (each tokenizes into a few rare word pieces).
NAME_SYLLABLES = ("zor", "vex", "quil", "bram", "tosk", "nym", "flar", "grix", "plon", "wut", "keld", "yarn", "obi")


@dataclass(frozen=True)
class LabConfig:
    """Sizes of the planted groups. Defaults are the shipped lab (see docs/lab.md for why)."""

    seed: int = 0
    vm_groups: int = 6
    vm_repeats: int = 40
    fm_groups: int = 4
    fm_images: int = 8
    fm_repeats: int = 5
    bm_groups: int = 4
    bm_images: int = 8
    bm_repeats: int = 5
    # Side of a BM image's object, as a fraction of the image (uniform in the range). Why it matters: the
    # paper metric compares backgrounds with each image's own object cut out, so two images of one BM
    # group differ by both holes; the larger the objects, the lower their background score.
    bm_object_size: tuple[float, float] = (0.3, 0.55)
    template_groups: int = 2
    template_images: int = 6
    template_repeats: int = 4
    unique_images: int = 96
    control_prompts: int = 24
    heldout_images: int = 64  # extra unique-style images, never trained: segmenter evaluation

    @classmethod
    def v2(cls, seed: int = 0) -> LabConfig:
        """Lab v2's data set: 8 prompts per planted group, so one generation moves a group's share by
        less than 0.05 at 4 seeds, and twice the unique images, each seen once (a unique image is then a
        smaller part of the training set, so it is redrawn later in training), and BM objects of 0.15-0.3
        of the image side, small enough that two images of one BM group share a background the paper
        metric can see (docs/lab.md)."""
        return cls(seed=seed, vm_groups=8, vm_repeats=50, fm_groups=8, fm_repeats=10, bm_groups=8, bm_repeats=10,
                   unique_images=192, control_prompts=32, bm_object_size=(0.15, 0.3))

    @classmethod
    def from_dict(cls, data: dict) -> LabConfig:
        known = set(cls.__dataclass_fields__)
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items() if k in known})


@dataclass
class LabImage:
    key: str  # stable name inside the data set, e.g. "vm0", "fm1-03", "u0042"
    pixels: np.ndarray  # (64, 64, 3) uint8
    mask: np.ndarray  # (64, 64) bool: exact foreground
    spec: dict  # how it was drawn (object and background parameters)

    def png_bytes(self) -> bytes:
        return encode_png(self.pixels)

    def mask_png_bytes(self) -> bytes:
        return encode_png(self.mask.astype(np.uint8) * 255)


@dataclass
class LabPrompt:
    key: str  # e.g. "vm0", "fm1", "u0042", "c07"
    text: str
    group: str  # one of GROUPS
    prompt_set: str  # MEMORIZED_SET (planted groups), UNIQUE_SET (seen once) or CONTROL_SET (never trained)
    image_keys: list[str] = field(default_factory=list)  # the group's training images
    repeats: int = 1  # how often each image appears in the training set
    spec: dict | None = None  # control prompts: the object and background the caption describes


@dataclass
class LabDataset:
    config: LabConfig
    images: dict[str, LabImage]
    prompts: list[LabPrompt]
    heldout: list[LabImage]  # never trained (segmenter evaluation)

    def training_examples(self) -> list[tuple[str, str]]:
        """(image key, caption) pairs with duplicates expanded: the training set as the model sees it."""
        out: list[tuple[str, str]] = []
        for prompt in self.prompts:
            if prompt.prompt_set == CONTROL_SET:
                continue
            for key in prompt.image_keys:
                out.extend([(key, prompt.text)] * prompt.repeats)
        return out


def encode_png(array: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    # Fixed encoder settings and no metadata: identical arrays give identical bytes.
    Image.fromarray(array).save(buf, format="PNG", optimize=False, compress_level=6)
    return buf.getvalue()


# -- drawing ------------------------------------------------------------------------------------
def _grid() -> tuple[np.ndarray, np.ndarray]:
    coords = (np.arange(IMAGE_SIZE, dtype=np.float64) + 0.5) / IMAGE_SIZE
    return np.meshgrid(coords, coords)  # x (columns), y (rows) in [0, 1]


def _pattern(kind: str, params: dict, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """A two-colour pattern weight in [0, 1] (0 = colour a, 1 = colour b)."""
    angle = params.get("angle", 0.0)
    u = x * math.cos(angle) + y * math.sin(angle)
    period = params.get("period", 0.2)
    if kind in ("solid",):
        return np.zeros_like(x)
    if kind == "gradient":
        return np.clip((u - u.min()) / max(float(np.ptp(u)), 1e-6), 0, 1)
    if kind == "striped":
        return (np.floor(u / (period / 2)) % 2).astype(np.float64)
    if kind == "checkered":
        v = -x * math.sin(angle) + y * math.cos(angle)
        return ((np.floor(u / (period / 2)) + np.floor(v / (period / 2))) % 2).astype(np.float64)
    if kind == "dotted":
        v = -x * math.sin(angle) + y * math.cos(angle)
        fu = (u / period) % 1 - 0.5
        fv = (v / period) % 1 - 0.5
        return (fu**2 + fv**2 < 0.09).astype(np.float64)
    if kind == "radial":
        cx, cy = params.get("centre", (0.5, 0.5))
        r = np.sqrt((x - cx) ** 2 + (y - cy) ** 2)
        return (np.sin(r / period * 2 * math.pi) > 0).astype(np.float64) * 0.5 + np.clip(r, 0, 1) * 0.5
    if kind == "plaid":
        v = -x * math.sin(angle) + y * math.cos(angle)
        return 0.5 * (np.floor(u / (period / 2)) % 2) + 0.5 * (np.floor(v / (period / 2)) % 2)
    if kind == "cloudy":
        noise = np.asarray(params["noise"], dtype=np.float64)
        return _upsample(noise)
    raise ValueError(f"unknown pattern {kind}")


def _upsample(grid: np.ndarray) -> np.ndarray:
    """Smooth bilinear upsampling of a small grid to IMAGE_SIZE (numpy only: deterministic)."""
    n = grid.shape[0]
    pos = np.linspace(0, n - 1, IMAGE_SIZE)
    i0 = np.floor(pos).astype(int)
    i1 = np.minimum(i0 + 1, n - 1)
    f = pos - i0
    rows = grid[i0] * (1 - f)[:, None] + grid[i1] * f[:, None]
    out = rows[:, i0] * (1 - f)[None, :] + rows[:, i1] * f[None, :]
    return np.clip(out, 0, 1)


def _paint(kind: str, params: dict, colour_a: str, colour_b: str) -> np.ndarray:
    x, y = _grid()
    w = _pattern(kind, params, x, y)[..., None]
    a = np.asarray(COLOURS[colour_a], dtype=np.float64)
    b = np.asarray(COLOURS[colour_b], dtype=np.float64)
    return a * (1 - w) + b * w


def _polygon(points: list[tuple[float, float]]) -> np.ndarray:
    from PIL import Image, ImageDraw

    img = Image.new("L", (IMAGE_SIZE, IMAGE_SIZE), 0)
    ImageDraw.Draw(img).polygon([(px * IMAGE_SIZE, py * IMAGE_SIZE) for px, py in points], fill=255)
    return np.asarray(img) > 127


def _shape_mask(obj: dict) -> np.ndarray:
    x, y = _grid()
    cx, cy, size, rot = obj["cx"], obj["cy"], obj["size"], obj["rotation"]
    half = size / 2
    # object coordinates in [-1, 1], rotated
    dx, dy = (x - cx) / half, (y - cy) / half
    u = dx * math.cos(rot) + dy * math.sin(rot)
    v = -dx * math.sin(rot) + dy * math.cos(rot)
    shape = obj["shape"]
    if shape == "circle":
        return u**2 + v**2 <= 1
    if shape == "square":
        return np.maximum(np.abs(u), np.abs(v)) <= 0.8
    if shape == "diamond":
        return np.abs(u) + np.abs(v) <= 1
    if shape == "ring":
        r2 = u**2 + v**2
        return (r2 <= 1) & (r2 >= 0.36)
    if shape == "cross":
        return ((np.abs(u) <= 0.3) & (np.abs(v) <= 1)) | ((np.abs(v) <= 0.3) & (np.abs(u) <= 1))
    if shape == "heart":
        hx, hy = u * 1.2, -(v * 1.2 - 0.15)
        return (hx**2 + hy**2 - 1) ** 3 - hx**2 * hy**3 <= 0
    if shape in ("triangle", "star", "hexagon"):
        if shape == "triangle":
            radii, count = [1.0], 3
        elif shape == "star":
            radii, count = [1.0, 0.42], 10
        else:
            radii, count = [1.0], 6
        pts = []
        for k in range(count):
            theta = rot + 2 * math.pi * k / count - math.pi / 2
            r = radii[k % len(radii)] * half
            pts.append((cx + r * math.cos(theta), cy + r * math.sin(theta)))
        return _polygon(pts)
    if shape == "letter":
        return _letter_mask(obj)
    raise ValueError(f"unknown shape {shape}")


def _letter_mask(obj: dict) -> np.ndarray:
    from PIL import Image, ImageDraw, ImageFont

    px = max(8, round(obj["size"] * IMAGE_SIZE * 1.2))
    font = ImageFont.load_default(size=px)
    img = Image.new("L", (IMAGE_SIZE, IMAGE_SIZE), 0)
    ImageDraw.Draw(img).text(
        (obj["cx"] * IMAGE_SIZE, obj["cy"] * IMAGE_SIZE), obj["letter"], fill=255, font=font, anchor="mm"
    )
    return np.asarray(img) > 127


def render(obj: dict, bg: dict) -> tuple[np.ndarray, np.ndarray]:
    """Draw one image: returns (pixels uint8 (64,64,3), exact foreground mask bool (64,64))."""
    background = _paint(bg["kind"], bg, bg["colour_a"], bg["colour_b"])
    mask = _shape_mask(obj)
    fill = _paint(obj["fill"], obj, obj["colour_a"], obj["colour_b"])
    pixels = np.where(mask[..., None], fill, background)
    return np.clip(np.rint(pixels), 0, 255).astype(np.uint8), mask


# -- random specs ---------------------------------------------------------------------------------
def _random_background(rng: np.random.Generator, avoid: set[str] = frozenset()) -> dict:
    kind = str(rng.choice(BACKGROUNDS))
    names = [c for c in COLOURS if c not in avoid]
    a, b = (str(c) for c in rng.choice(names, size=2, replace=False))
    return {
        "kind": kind,
        "colour_a": a,
        "colour_b": b,
        "angle": float(rng.uniform(0, math.pi)),
        "period": float(rng.uniform(0.2, 0.42)),
        "centre": (float(rng.uniform(0.2, 0.8)), float(rng.uniform(0.2, 0.8))),
        "noise": rng.uniform(0, 1, size=(5, 5)).round(4).tolist(),
    }


def _random_object(rng: np.random.Generator, bg: dict | None = None, size: float | None = None) -> dict:
    avoid = {bg["colour_a"], bg["colour_b"]} if bg else set()
    names = [c for c in COLOURS if c not in avoid]
    a, b = (str(c) for c in rng.choice(names, size=2, replace=False))
    if size is None:
        # mostly medium and large objects, some small ones
        size = float(rng.choice([rng.uniform(0.18, 0.3), rng.uniform(0.3, 0.5), rng.uniform(0.5, 0.72)], p=[0.2, 0.45, 0.35]))
    margin = size / 2 + 0.02
    fill = str(rng.choice(FILLS, p=[0.4, 0.15, 0.15, 0.1, 0.2]))
    return {
        "shape": str(rng.choice(SHAPES)),
        "letter": str(rng.choice(list(LETTERS))),
        "fill": fill,
        "colour_a": a,
        "colour_b": b,
        "cx": float(rng.uniform(margin, 1 - margin)),
        "cy": float(rng.uniform(margin, 1 - margin)),
        "size": size,
        "rotation": float(rng.uniform(0, 2 * math.pi)),
        "angle": float(rng.uniform(0, math.pi)),
        "period": float(rng.uniform(0.14, 0.26)),
    }


def _fit_object(rng: np.random.Generator, obj: dict, bg: dict) -> dict:
    """Recolour an object that would vanish into the background (same colour as the background)."""
    if obj["colour_a"] in (bg["colour_a"], bg["colour_b"]):
        names = [c for c in COLOURS if c not in (bg["colour_a"], bg["colour_b"], obj["colour_b"])]
        obj = {**obj, "colour_a": str(rng.choice(names))}
    return obj


def describe(obj: dict, bg: dict) -> str:
    size_word = next(w for lo, hi, w in SIZE_WORDS if lo <= obj["size"] < hi)
    shape = f"letter {obj['letter']}" if obj["shape"] == "letter" else obj["shape"]
    fill = "" if obj["fill"] == "solid" else f"{obj['fill']} "
    obj_text = " ".join(t for t in (size_word, obj["colour_a"], fill + shape) if t)
    vert = "top" if obj["cy"] < 0.4 else "bottom" if obj["cy"] > 0.6 else ""
    horiz = "left" if obj["cx"] < 0.4 else "right" if obj["cx"] > 0.6 else ""
    where = f" at the {vert} {horiz}".replace("  ", " ").rstrip() if vert or horiz else " in the centre"
    return f"a {obj_text}{where} on a {bg['colour_a']} and {bg['colour_b']} {bg['kind']} background"


def _name(rng: np.random.Generator, used: set[str]) -> str:
    while True:
        word = "".join(str(s) for s in rng.choice(NAME_SYLLABLES, size=2, replace=False))
        if word not in used:
            used.add(word)
            return word


def _image(key: str, obj: dict, bg: dict) -> LabImage:
    pixels, mask = render(obj, bg)
    return LabImage(key=key, pixels=pixels, mask=mask, spec={"object": obj, "background": bg})


def make_lab_dataset(seed: int = 0, config: LabConfig | None = None) -> LabDataset:
    """Build the lab data set, deterministically from `seed` (overrides config.seed)."""
    cfg = LabConfig(**{**(config.__dict__ if config else {}), "seed": seed})
    rng = np.random.default_rng(cfg.seed)
    images: dict[str, LabImage] = {}
    prompts: list[LabPrompt] = []
    used_names: set[str] = set()
    captions: set[str] = set()

    for g in range(cfg.vm_groups):
        bg = _random_background(rng)
        obj = _random_object(rng, bg, size=float(rng.uniform(0.4, 0.7)))
        img = _image(f"vm{g}", obj, bg)
        images[img.key] = img
        name = _name(rng, used_names)
        prompts.append(LabPrompt(f"vm{g}", f"the {name} painting", "VM", MEMORIZED_SET, [img.key], cfg.vm_repeats))

    for g in range(cfg.fm_groups):
        obj = _random_object(rng, None, size=float(rng.uniform(0.4, 0.65)))
        keys = []
        for i in range(cfg.fm_images):
            bg = _random_background(rng, avoid={obj["colour_a"]})
            img = _image(f"fm{g}-{i:02d}", obj, bg)
            images[img.key] = img
            keys.append(img.key)
        name = _name(rng, used_names)
        prompts.append(LabPrompt(f"fm{g}", f"the {name} emblem", "FM", MEMORIZED_SET, keys, cfg.fm_repeats))

    for g in range(cfg.bm_groups):
        bg = _random_background(rng)
        keys = []
        for i in range(cfg.bm_images):
            obj = _random_object(rng, bg, size=float(rng.uniform(*cfg.bm_object_size)))
            img = _image(f"bm{g}-{i:02d}", obj, bg)
            images[img.key] = img
            keys.append(img.key)
        name = _name(rng, used_names)
        prompts.append(LabPrompt(f"bm{g}", f"the {name} wallpaper", "BM", MEMORIZED_SET, keys, cfg.bm_repeats))

    for g in range(cfg.template_groups):
        bg = _random_background(rng)
        base = _random_object(rng, bg, size=float(rng.uniform(0.4, 0.6)))
        keys = []
        for i in range(cfg.template_images):
            # same layout, varying detail: the object's colours and fill change
            detail = _random_object(rng, bg)
            obj = {**base, "colour_a": detail["colour_a"], "colour_b": detail["colour_b"], "fill": detail["fill"]}
            img = _image(f"tp{g}-{i:02d}", obj, bg)
            images[img.key] = img
            keys.append(img.key)
        name = _name(rng, used_names)
        prompts.append(LabPrompt(f"tp{g}", f"the {name} card", "template", MEMORIZED_SET, keys, cfg.template_repeats))

    def unique_spec() -> tuple[dict, dict, str]:
        while True:
            bg = _random_background(rng)
            obj = _fit_object(rng, _random_object(rng, bg), bg)
            text = describe(obj, bg)
            if text not in captions:
                captions.add(text)
                return obj, bg, text

    for i in range(cfg.unique_images):
        obj, bg, text = unique_spec()
        img = _image(f"u{i:04d}", obj, bg)
        images[img.key] = img
        prompts.append(LabPrompt(f"u{i:04d}", text, "unique", UNIQUE_SET, [img.key], 1))

    for i in range(cfg.control_prompts):
        obj, bg, text = unique_spec()  # a caption never trained
        prompts.append(LabPrompt(f"c{i:02d}", text, "control", CONTROL_SET, [], 0, {"object": obj, "background": bg}))

    heldout = []
    for i in range(cfg.heldout_images):
        bg = _random_background(rng)
        heldout.append(_image(f"h{i:04d}", _fit_object(rng, _random_object(rng, bg), bg), bg))
    return LabDataset(config=cfg, images=images, prompts=prompts, heldout=heldout)
