"""The plug-in registry: entry-point discovery, lazy loading, duplicate names, a third-party package."""

from __future__ import annotations

import datetime as dt
import io
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fbmem_data import plugins
from fbmem_data.errors import PluginError
from fbmem_data.workspace import Workspace

BUILT_IN = {
    plugins.SEGMENTERS: {"saliency", "birefnet", "sam", "lab"},
    plugins.EMBEDDERS: {"thumbnail", "efficientnet-lite0", "open_clip", "sscd"},
    plugins.METRICS: {"msssim", "ssim", "msssim-masked", "msssim-regions"},
    plugins.MITIGATIONS: {"none", "rta", "wen", "nemo", "nemo-c", "nemo-c-transfer"},
    plugins.UTILITIES: {"clip", "lab-colours"},
    plugins.DISTRIBUTORS: {"local", "ray"},
    plugins.MODELS: {"lab"},
    plugins.WEIGHTS: {"lab-model", "lab-segmenter"},
    plugins.TEST_BEDS: {"lab", "planted", "real-photos"},
}

TINY_MODULE = '''
import numpy as np

from fbmem_data.segment.base import Segmenter, check_batch


class TinySegmenter(Segmenter):
    """Foreground = the left half of the image."""

    name = "tiny-third-party"

    def __init__(self, device="cpu", **options):
        self.device = device

    def segment(self, images):
        masks = []
        for img in check_batch(images):
            mask = np.zeros(img.shape[:2], np.float32)
            mask[:, : img.shape[1] // 2] = 1.0
            masks.append(mask)
        return masks
'''


def write_distribution(root: Path, name: str, entry_points: str, module: str | None = None) -> Path:
    """A minimal installed distribution: NAME-0.1.dist-info/{METADATA,entry_points.txt} (+ a module)."""
    info = root / f"{name}-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(textwrap.dedent(entry_points))
    if module is not None:
        (root / f"{name}.py").write_text(module)
    return root


@pytest.fixture()
def on_path(monkeypatch: pytest.MonkeyPatch):
    """Put a directory on sys.path and make the registry re-read entry points (undone afterwards)."""

    def add(root: Path) -> None:
        monkeypatch.syspath_prepend(str(root))
        plugins.refresh()

    yield add
    plugins.refresh()


def test_every_family_lists_fbmems_own_plugins() -> None:
    for family, expected in BUILT_IN.items():
        assert expected <= set(plugins.names(family)), family
        assert plugins.provider(family, sorted(expected)[0]).endswith("(fbmem)")


def test_old_short_family_names_still_work() -> None:
    assert plugins.names("segmenter") == plugins.names(plugins.SEGMENTERS)
    with pytest.raises(PluginError, match="unknown plug-in family"):
        plugins.names("segmenters-typo")


def test_every_builtin_factory_loads_and_builds_the_family_protocol() -> None:
    # Loading imports the plug-in's module only; weights-free plug-ins are also built and checked.
    for family, expected in BUILT_IN.items():
        for name in expected:
            assert callable(plugins.load(family, name))
    proto = plugins.protocol(plugins.SEGMENTERS)
    assert isinstance(plugins.create(plugins.SEGMENTERS, "saliency", device="cpu"), proto)
    assert isinstance(plugins.create(plugins.METRICS, "msssim"), plugins.protocol(plugins.METRICS))


def test_discovery_imports_no_plugin_module_and_no_torch() -> None:
    code = (
        "import sys; from fbmem_data import plugins\n"
        "for f in plugins.FAMILIES: plugins.names(f)\n"
        "bad = [m for m in sys.modules if m == 'torch' or m.startswith(('fbmem_data.segment.', 'fbmem_data.mitigate.', "
        "'fbmem_data.similarity.', 'fbmem_data.utility.', 'fbmem_data.lab'))]\n"
        "print(bad)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_lab_is_a_plug_in_not_a_special_case() -> None:
    """No core module names the lab: it brings its model source, segmenter, utility, doctor entries, test bed
    and commands itself. The one "lab" left in the core is CIE L*a*b* (a thumbnail colour space)."""
    import re

    from fbmem_data.doctor import all_models
    from fbmem_data.evaluate import bed_names
    from fbmem_data.generate.loading import default_model_id
    from fbmem_data.lab.pipeline import LAB_MODEL_ID

    root = Path(plugins.__file__).parent
    found = [
        f"{path.relative_to(root)}: {line.strip()}"
        for path in sorted(root.rglob("*.py"))
        if "lab" not in path.relative_to(root).parts[:1]
        for line in path.read_text(encoding="utf-8").splitlines()
        if re.search(r"[\"']lab[\"']", line)
    ]
    assert found == ['embed/thumbnail.py: CIELAB = "lab"']
    assert {"lab-model", "lab-segmenter"} <= set(all_models()) and "lab" in bed_names()
    assert default_model_id("lab") == LAB_MODEL_ID


def test_every_object_family_contract_is_a_documented_runtime_protocol() -> None:
    import inspect

    families = (plugins.SEGMENTERS, plugins.EMBEDDERS, plugins.METRICS, plugins.MITIGATIONS, plugins.UTILITIES,
                plugins.MODELS, plugins.DISTRIBUTORS)
    for family in families:
        proto = plugins.protocol(family)
        assert getattr(proto, "_is_protocol", False) and getattr(proto, "_is_runtime_protocol", False), family
        for name in vars(proto):
            member = getattr(proto, name)
            if name.startswith("_") or not inspect.isfunction(member):
                continue
            doc = inspect.getdoc(member) or ""
            signature = inspect.signature(member)
            returns_none = signature.return_annotation in ("None", None)
            takes_args = len(signature.parameters) > 1  # more than self
            assert doc, (family, name)
            if returns_none:
                assert "Args:" in doc or not takes_args, (family, name)
            else:
                assert "Returns:" in doc or "Yields:" in doc, (family, name)


def test_unknown_name_lists_what_exists() -> None:
    with pytest.raises(PluginError, match="unknown segmenter 'nope'") as info:
        plugins.create(plugins.SEGMENTERS, "nope")
    assert "saliency" in (info.value.hint or "")


def test_a_duplicate_entry_point_is_an_error_naming_both_providers(tmp_path: Path, on_path) -> None:
    on_path(write_distribution(tmp_path, "dup_seg", "[fbmem.segmenters]\nsaliency = dup_seg:make\n"))
    with pytest.raises(PluginError, match=r"two fbmem\.segmenters plug-ins are named 'saliency'") as info:
        plugins.names(plugins.SEGMENTERS)
    assert "fbmem_data.segment.saliency:make_saliency (fbmem)" in str(info.value)
    assert "dup_seg:make (dup_seg)" in str(info.value)


def test_a_broken_entry_point_fails_when_used_not_when_listed(tmp_path: Path, on_path) -> None:
    on_path(write_distribution(tmp_path, "broken_seg", "[fbmem.segmenters]\nbroken = no_such_module:make\n"))
    assert "broken" in plugins.names(plugins.SEGMENTERS)
    with pytest.raises(PluginError, match="cannot be loaded") as info:
        plugins.create(plugins.SEGMENTERS, "broken")
    assert "broken_seg" in str(info.value)


def test_register_in_process_and_its_duplicates() -> None:
    @plugins.register(plugins.METRICS, "test-only-metric")
    def make(**kw):
        return ("built", kw)

    try:
        assert "test-only-metric" in plugins.names(plugins.METRICS)
        assert plugins.create("metric", "test-only-metric", a=1) == ("built", {"a": 1})
        with pytest.raises(PluginError, match=r"two fbmem\.metrics plug-ins are named 'msssim'"):
            plugins.register(plugins.METRICS, "msssim")(make)
        with pytest.raises(PluginError, match="named 'test-only-metric'"):
            plugins.register(plugins.METRICS, "test-only-metric")(lambda **kw: None)
    finally:
        plugins.unregister(plugins.METRICS, "test-only-metric")
    assert "test-only-metric" not in plugins.names(plugins.METRICS)


def test_a_third_party_segmenter_runs_from_the_cli(tmp_path: Path) -> None:
    root = write_distribution(
        tmp_path / "site",
        "tiny_seg",
        "[fbmem.segmenters]\ntiny-third-party = tiny_seg:TinySegmenter\n",
        TINY_MODULE,
    )
    ws = Workspace.init(tmp_path / "ws")
    buf = io.BytesIO()
    Image.fromarray(np.full((16, 20, 3), 128, np.uint8)).save(buf, format="PNG")
    image_id, path = ws.store_image(buf.getvalue(), "png")
    ws.write(
        "images",
        [
            {
                "image_id": image_id,
                "role": "train",
                "store_path": str(path.relative_to(ws.root)),
                "status": "ok",
                "ingested_at": dt.datetime.now(dt.timezone.utc),
            }
        ],
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    args = [
        sys.executable,
        "-m",
        "fbmem_data",
        "segment",
        "-w",
        str(ws.root),
        "--segmenter",
        "tiny-third-party",
        "--device",
        "cpu",
    ]
    out = subprocess.run(args, capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "ok=1" in out.stdout
    rows = ws.sql("SELECT segmenter, status FROM masks").to_pylist()
    assert rows == [{"segmenter": "tiny-third-party", "status": "ok"}]
    # Without the package the name is unknown: one Error line, exit 1.
    out = subprocess.run(args, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": ""})
    assert out.returncode == 1 and "unknown segmenter 'tiny-third-party'" in out.stdout + out.stderr
