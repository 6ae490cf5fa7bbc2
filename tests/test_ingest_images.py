from __future__ import annotations

import hashlib
import io
import json
import os
import struct
import subprocess
import sys
import tarfile
import zlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image, ImageFile

from fbmem_data.errors import FbmemError, InputError
from fbmem_data.ids import missing_image_id, params_hash, prompt_id
from fbmem_data.ingest.decode import to_rgb
from fbmem_data.ingest.images import ingest_images
from fbmem_data.ingest.prompts import ingest_prompts
from fbmem_data.ingest.report import IngestReport
from fbmem_data.workspace import Workspace


def encode(img: Image.Image, fmt: str = "PNG", **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def noise(size: int = 32, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (size, size, 3), dtype=np.uint8))


def png_20k() -> bytes:
    """A valid 20,000 x 20,000 1-bit PNG (about 50 KB): decoding it would need 400 MB."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    side = 20_000
    comp = zlib.compressobj(9)
    row = b"\x00" * (1 + side // 8)
    idat = b"".join(comp.compress(row) for _ in range(side)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def balanced(report: IngestReport) -> bool:
    return report.inputs == sum(report.by_status.values()) + report.already_stored + report.duplicates


def rows_by_name(ws: Workspace) -> dict[str, dict]:
    return {Path(r["source_uri"]).name: r for r in ws.sql("SELECT * FROM images").to_pylist()}


@pytest.fixture
def odd_images(tmp_path: Path) -> Path:
    folder = tmp_path / "odd"
    folder.mkdir()
    good = encode(noise(64))
    palette = Image.new("P", (8, 8), 0)
    palette.putpalette([0, 0, 0, 255, 0, 0] * 128)
    files = {
        "good.png": good,
        "truncated.png": good[: len(good) // 2],
        "truncated.jpg": encode(noise(64), "JPEG")[:700],
        "zero.png": b"",
        "png_named.jpg": encode(noise(16, seed=1)),
        "cmyk.jpg": encode(Image.new("CMYK", (16, 16), (0, 50, 100, 0)), "JPEG"),
        "sixteen.png": encode(Image.fromarray((np.arange(256, dtype=np.uint16) * 250).reshape(16, 16))),
        "palette_alpha.png": encode(palette, transparency=0),
        "la.png": encode(Image.new("LA", (8, 8), (3, 200))),
        "gray.png": encode(Image.new("L", (8, 8), 7)),
        "huge.png": png_20k(),
        "readme.md": b"# not an image\n",
        "garbage.png": b"this is text pretending to be a PNG",
    }
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return folder


def test_status_rules_for_odd_files(workspace: Workspace, odd_images: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    decoded_sizes: list[tuple[int, int]] = []
    original_load = ImageFile.ImageFile.load

    def spy_load(self: ImageFile.ImageFile):  # type: ignore[no-untyped-def]
        decoded_sizes.append(self.size)
        return original_load(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", spy_load)
    report = ingest_images(workspace, odd_images, "train", workers=1, progress=False)
    assert report.inputs == 13 and balanced(report)
    assert dict(report.by_status) == {"ok": 7, "corrupt": 4, "too_large": 1, "unsupported": 1}
    rows = rows_by_name(workspace)
    assert len(rows) == 13

    def check(name: str, status: str, error: str | None = None, **fields: object) -> None:
        row = rows[name]
        assert row["status"] == status, (name, row)
        if error is None:
            assert row["error"] is None, (name, row["error"])
        else:
            assert error in (row["error"] or ""), (name, row["error"])
        for key, value in fields.items():
            assert row[key] == value, (name, key, row[key])

    check("good.png", "ok", mode="RGB", format="PNG", width=64, height=64)
    check("truncated.png", "corrupt", "OSError: image file is truncated", format="PNG", width=64)
    check("truncated.jpg", "corrupt", "image file is truncated", format="JPEG")
    check("zero.png", "corrupt", "empty file (0 bytes)", n_bytes=0)
    check("png_named.jpg", "ok", format="PNG", mode="RGB")
    check("cmyk.jpg", "ok", mode="CMYK", format="JPEG")
    check("sixteen.png", "ok", mode="I;16")
    check("palette_alpha.png", "ok", mode="P")
    check("la.png", "ok", mode="LA")
    check("gray.png", "ok", mode="L")
    check("huge.png", "too_large", "20000x20000 = 400000000 pixels exceeds max_pixels", width=20_000, height=20_000)
    check("readme.md", "unsupported", "not an image: PIL cannot identify the format")
    check("garbage.png", "corrupt", "not a decodable image")
    assert (20_000, 20_000) not in decoded_sizes  # rejected from the header alone
    # Every row's bytes are in the store under their sha256, with the content's extension.
    for name, row in rows.items():
        data = (odd_images / name).read_bytes()
        assert row["image_id"] == hashlib.sha256(data).hexdigest()
        assert row["n_bytes"] == len(data)
        if row["status"] == "unsupported":  # not an image: recorded, not copied into the store
            assert row["store_path"] is None
        else:
            assert (workspace.root / row["store_path"]).read_bytes() == data
    assert rows["png_named.jpg"]["store_path"].endswith(".png")
    assert [n for n in report.notes if "extension" in n] == [
        f"{odd_images / 'png_named.jpg'}: content is PNG though the extension is .jpg; stored as .png, nothing lost"
    ]


def test_to_rgb_keeps_16_bit_range_and_converts_every_mode() -> None:
    sixteen = Image.fromarray((np.arange(256, dtype=np.uint16) * 257).reshape(16, 16))
    assert sixteen.mode == "I;16"
    gray = np.asarray(to_rgb(sixteen))[..., 0].ravel()
    assert gray.tolist() == list(range(256))  # PIL's convert("RGB") would clip all but one value to 255
    palette = Image.new("P", (4, 4), 1)
    palette.putpalette([0, 0, 0, 10, 20, 30] * 128)
    palette.info["transparency"] = 0
    modes = [Image.new("CMYK", (4, 4)), Image.new("LA", (4, 4)), palette, Image.new("I", (4, 4), 70000)]
    for img in modes:
        out = to_rgb(img)
        assert out.mode == "RGB" and out.size == (4, 4)
    assert np.asarray(to_rgb(palette))[0, 0].tolist() == [10, 20, 30]


def test_max_pixels_option_and_pil_limit_restored(workspace: Workspace, tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.png").write_bytes(encode(noise(100)))
    before = Image.MAX_IMAGE_PIXELS
    report = ingest_images(workspace, tmp_path / "in", "reference", workers=1, max_pixels=5_000, progress=False)
    assert before == Image.MAX_IMAGE_PIXELS
    assert dict(report.by_status) == {"too_large": 1}
    assert "100x100 = 10000 pixels exceeds max_pixels 5000" in workspace.sql("SELECT error FROM images").column(0)[0].as_py()


def test_duplicates_roles_and_rerun(workspace: Workspace, tmp_path: Path) -> None:
    folder = tmp_path / "imgs"
    (folder / "sub").mkdir(parents=True)
    for i in range(5):
        (folder / f"{i}.png").write_bytes(encode(noise(8, seed=i)))
    (folder / "sub" / "copy_of_0.png").write_bytes((folder / "0.png").read_bytes())
    first = ingest_images(workspace, folder, "train", workers=1, batch_size=2, progress=False)
    assert first.inputs == 6 and first.duplicates == 1 and first.written["images"] == 5 and balanced(first)
    assert any("copy_of_0.png has the same bytes as" in n for n in first.notes)
    again = ingest_images(workspace, folder, "train", workers=1, progress=False)
    assert again.written.get("images", 0) == 0 and again.already_stored == 5 and balanced(again)
    other_role = ingest_images(workspace, folder / "0.png", "generated", workers=1, progress=False)
    assert other_role.written["images"] == 1
    counts = workspace.sql("SELECT role, count(*) AS n, count(DISTINCT image_id) AS d FROM images GROUP BY 1 ORDER BY 1")
    assert counts.to_pylist() == [{"role": "generated", "n": 1, "d": 1}, {"role": "train", "n": 5, "d": 5}]
    assert len(list(workspace.images_dir.rglob("*.png"))) == 5  # bytes stored once whatever the role


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def test_webdataset_tar_with_captions(workspace: Workspace, tmp_path: Path) -> None:
    shard = tmp_path / "00007.tar"
    with tarfile.open(shard, "w") as tar:
        _add(tar, "000070000.jpg", encode(noise(16, 1), "JPEG"))
        _add(tar, "000070000.txt", b"a photo of a red fox\n")
        _add(tar, "000070000.json", json.dumps({"url": "http://x/fox.jpg", "key": "000070000"}).encode())
        _add(tar, "000070001.png", encode(noise(16, 2)))
        _add(tar, "000070001.txt", b"a blue car")
        _add(tar, "000070002.webp", encode(noise(16, 3), "WEBP"))
        _add(tar, "000070003.jpg", b"\xff\xd8\xff\xe0 broken jpeg")
        _add(tar, "000070003.txt", b"a broken one")
    report = ingest_images(workspace, shard, "train", workers=2, batch_size=2, progress=False)
    assert report.inputs == 4 and report.side_files == 4 and balanced(report)
    assert dict(report.by_status) == {"ok": 3, "corrupt": 1}
    assert report.prompt_set == "00007"
    prompts = workspace.sql("SELECT source_key, text, url, prompt_set FROM prompts ORDER BY 1").to_pylist()
    assert prompts == [
        {"source_key": "000070000", "text": "a photo of a red fox", "url": "http://x/fox.jpg", "prompt_set": "00007"},
        {"source_key": "000070001", "text": "a blue car", "url": None, "prompt_set": "00007"},
        {"source_key": "000070003", "text": "a broken one", "url": None, "prompt_set": "00007"},
    ]
    links = workspace.sql(
        "SELECT p.text, i.source_uri, i.status, l.relation FROM train_links l JOIN prompts p USING (prompt_id) "
        "JOIN images i ON i.image_id = l.image_id AND i.role = 'train' ORDER BY 1"
    ).to_pylist()
    assert [(r["text"], r["source_uri"].split("::")[1], r["relation"]) for r in links] == [
        ("a blue car", "000070001.png", "caption"),
        ("a broken one", "000070003.jpg", "caption"),
        ("a photo of a red fox", "000070000.jpg", "caption"),
    ]
    stored = workspace.sql("SELECT store_path FROM images WHERE source_uri LIKE '%000070002.webp'").column(0)[0].as_py()
    with tarfile.open(shard) as tar:
        assert (workspace.root / stored).read_bytes() == tar.extractfile("000070002.webp").read()  # type: ignore[union-attr]
    again = ingest_images(workspace, shard, "train", workers=1, prompt_set="00007", progress=False)
    assert again.already_stored == 4 and again.written == {"prompts": 0, "train_links": 0}


def test_img2dataset_folder_and_gz_shard(workspace: Workspace, tmp_path: Path) -> None:
    out = tmp_path / "laion_out"
    out.mkdir()
    with tarfile.open(out / "00000.tar", "w") as tar:
        _add(tar, "000000000.jpg", encode(noise(8, 5), "JPEG"))
        _add(tar, "000000000.json", json.dumps({"key": "000000000"}).encode())
    with tarfile.open(out / "00001.tar.gz", "w:gz") as tar:
        _add(tar, "000010000.png", encode(noise(8, 6)))
        _add(tar, "000010000.txt", b"from a gz shard")
    pq.write_table(
        pa.table({"key": ["000000000", "000000001"], "caption": ["caption from parquet", "failed"],
                  "url": ["http://a/0.jpg", "http://a/1.jpg"], "status": ["success", "failed_to_download"]}),
        out / "00000.parquet",
    )
    (out / "00000_stats.json").write_text("{}")
    report = ingest_images(workspace, out, "train", workers=1, prompt_set="laion", progress=False)
    assert report.inputs == 2 and report.metadata_files == 2 and report.side_files == 2
    assert dict(report.by_status) == {"ok": 2}
    texts = workspace.sql("SELECT text, url FROM prompts ORDER BY 1").to_pylist()
    assert texts == [{"text": "caption from parquet", "url": "http://a/0.jpg"}, {"text": "from a gz shard", "url": None}]
    assert workspace.count("train_links") == 2


def test_img2dataset_files_layout(workspace: Workspace, tmp_path: Path) -> None:
    out = tmp_path / "files_out"
    (out / "00000").mkdir(parents=True)
    (out / "00000" / "000000000.jpg").write_bytes(encode(noise(8, 7), "JPEG"))
    (out / "00000" / "000000000.txt").write_text("caption from the side file")
    (out / "00000" / "000000000.json").write_text(json.dumps({"url": "http://b/0.jpg", "caption": "ignored"}))
    (out / "00000" / "000000001.png").write_bytes(encode(noise(8, 8)))
    pq.write_table(pa.table({"key": ["000000001"], "caption": ["caption from parquet"], "url": ["http://b/1.png"]}),
                   out / "00000.parquet")
    (out / "00000_stats.json").write_text("{}")
    report = ingest_images(workspace, out, "train", workers=1, progress=False)
    assert report.inputs == 2 and report.side_files == 2 and report.metadata_files == 2
    assert report.prompt_set == "files_out"
    got = workspace.sql("SELECT source_key, text, url FROM prompts ORDER BY 1").to_pylist()
    assert got == [
        {"source_key": "000000000", "text": "caption from the side file", "url": "http://b/0.jpg"},
        {"source_key": "000000001", "text": "caption from parquet", "url": "http://b/1.png"},
    ]
    assert workspace.count("train_links") == 2


def test_manifest_fills_generations(workspace: Workspace, tmp_path: Path, reference_dir: Path) -> None:
    ingest_prompts(workspace, reference_dir / "memorized_laion_prompts.csv", prompt_set="memorized")
    pid0 = workspace.sql("SELECT prompt_id FROM prompts WHERE source_key = '0'").column(0)[0].as_py()
    gen = tmp_path / "gen"
    (gen / "p0").mkdir(parents=True)
    for seed in (1, 2):
        (gen / "p0" / f"seed{seed}.png").write_bytes(encode(noise(16, seed)))
    (gen / "new.png").write_bytes(encode(noise(16, 9)))
    (gen / "stray.png").write_bytes(encode(noise(16, 10)))
    manifest = tmp_path / "gens.csv"
    manifest.write_text(
        "file,prompt_id,prompt,seed,model_id,steps,guidance,mitigation,mitigation_params\n"
        f"p0/seed1.png,{pid0},,1,sd-v1-4,50,7.5,,\n"
        f"p0/seed2.png,{pid0},,2,sd-v1-4,50,7.5,,\n"
        'new.png,,"a brand new prompt",3,sd-v1-4,,,rta,"{""n_tokens"": 4}"\n'
        "gone.png,,a brand new prompt,4,sd-v1-4,,,,\n",
        encoding="utf-8",
    )
    report = ingest_images(workspace, gen, "generated", manifest=manifest, prompt_set="mine", workers=1, progress=False)
    assert report.inputs == 5 and balanced(report)
    assert dict(report.by_status) == {"ok": 4, "missing": 1}
    assert report.written["generations"] == 3 and report.written["prompts"] == 1
    assert any("not named in the manifest" in n for n in report.notes)
    assert any("gone.png is missing" in n for n in report.notes)
    gens = workspace.sql("SELECT * FROM generations ORDER BY seed").to_pylist()
    assert [(g["seed"], g["model_id"], g["mitigation"]) for g in gens] == [
        (1, "sd-v1-4", "none"), (2, "sd-v1-4", "none"), (3, "sd-v1-4", "rta")
    ]
    new_pid = prompt_id("mine", "a brand new prompt", "a brand new prompt")
    assert gens[2]["prompt_id"] == new_pid and json.loads(gens[2]["mitigation_params"]) == {"n_tokens": 4}
    settings = {"prompt_id": pid0, "model_id": "sd-v1-4", "seed": 1, "steps": 50, "guidance": 7.5,
                "height": None, "width": None, "mitigation": "none", "mitigation_params": {}}
    assert gens[0]["generation_id"] == params_hash(settings)
    assert gens[0]["image_id"] == hashlib.sha256((gen / "p0" / "seed1.png").read_bytes()).hexdigest()
    missing = workspace.sql("SELECT * FROM images WHERE status = 'missing'").to_pylist()[0]
    assert missing["image_id"] == missing_image_id(missing["source_uri"])
    assert missing["source_uri"] == str((gen / "gone.png").resolve()) and missing["store_path"] is None
    again = ingest_images(workspace, gen, "generated", manifest=manifest, prompt_set="mine", workers=1, progress=False)
    assert again.written == {"generations": 0} and again.already_stored == 5 and balanced(again), again.summary()
    assert workspace.count("generations") == 3 and workspace.count("images") == 5


def test_manifest_for_training_images(workspace: Workspace, tmp_path: Path) -> None:
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "a.jpg").write_bytes(encode(noise(8, 1), "JPEG"))
    manifest = tmp_path / "links.csv"
    manifest.write_text("file;caption;set\na.jpg;the source caption;laion\n", encoding="utf-8")
    report = ingest_images(workspace, tmp_path / "train", "train", manifest=manifest, workers=1, progress=False)
    assert report.written == {"prompts": 1, "train_links": 1, "images": 1}
    link = workspace.sql("SELECT l.relation, p.prompt_set FROM train_links l JOIN prompts p USING (prompt_id)").to_pylist()
    assert link == [{"relation": "manifest", "prompt_set": "laion"}]


@pytest.mark.parametrize(
    ("manifest_text", "expected"),
    [
        ("file,prompt_id,model_id\na.png,nope,m\n", r"1 prompt_id\(s\) not in the prompts table: 'nope' \(line 2\)"),
        ("file,prompt\na.png,cat\n", r"line 2: model_id is required for role=generated"),
        ("file,prompt,model_id,seed\na.png,cat,m,1\nb.png,cat,m,1\n", r"line 3: the same prompt and settings as line 2"),
        ("file,prompt,model_id,seed\na.png,cat,m,one\n", r"line 2: seed 'one' is not an integer"),
        ("path_to,prompt\na.png,cat\n", r"no file column"),
        ("file,prompt,model_id\na.png,cat,m\na.png,dog,m\n", r"line 3: file 'a.png' is listed again \(first at line 2\)"),
    ],
)
def test_manifest_errors(workspace: Workspace, tmp_path: Path, manifest_text: str, expected: str) -> None:
    (tmp_path / "gen").mkdir()
    for name in ("a.png", "b.png"):
        (tmp_path / "gen" / name).write_bytes(encode(noise(8, len(name))))
    (tmp_path / "m.csv").write_text(manifest_text, encoding="utf-8")
    with pytest.raises(InputError, match=expected):
        ingest_images(workspace, tmp_path / "gen", "generated", manifest=tmp_path / "m.csv", workers=1, progress=False)
    assert workspace.count("images") == 0


def _worker_dies(*args: object) -> None:
    os._exit(3)  # as a worker killed by the OOM killer, or a decoder crash, would


def test_dead_worker_is_a_clear_error(workspace: Workspace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import fbmem_data.ingest.images as images_module

    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.png").write_bytes(encode(noise(8)))
    monkeypatch.setattr(images_module, "process_batch", _worker_dies)
    with pytest.raises(FbmemError, match="a decoding worker process died"):
        ingest_images(workspace, tmp_path / "in", "train", workers=2, progress=False)
    assert workspace.count("images") == 0


def test_bad_arguments(workspace: Workspace, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="unknown role 'test'"):
        ingest_images(workspace, tmp_path, "test")
    with pytest.raises(InputError, match=r"image path .*nowhere does not exist"):
        ingest_images(workspace, tmp_path / "nowhere", "train")
    (tmp_path / "bad.tar").write_bytes(b"not a tar at all" * 100)
    with pytest.raises(InputError, match=r"tar shard .*bad\.tar is damaged or not a tar"):
        ingest_images(workspace, tmp_path / "bad.tar", "train")


def test_cli_summary_and_exit_codes(workspace: Workspace, odd_images: Path) -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "fbmem_data", "ingest", "images", *args, "-w", str(workspace.root)],
                              capture_output=True, text=True)

    out = run(str(odd_images), "--role", "train", "--workers", "1")
    assert out.returncode == 0, out.stderr  # bad images are rows, not a failure
    assert "by status: corrupt 4, ok 7, too_large 1, unsupported 1" in out.stdout
    assert "written: images 13" in out.stdout
    assert "ingest images" in out.stderr  # the progress bar
    missing = run(str(odd_images / "nope"), "--role", "train")
    assert missing.returncode == 1 and "does not exist" in missing.stderr
