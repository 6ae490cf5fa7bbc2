"""`fbmem doctor` with present, absent and corrupted weight files (tiny fake files, test-only entries)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fbmem_data.cli.app import build_app
from fbmem_data.doctor import (
    KnownFile,
    ModelSpec,
    check_model,
    diagnose,
    get_model,
    register_model,
    unregister_model,
)
from fbmem_data.errors import PluginError

WEIGHTS = b"fake weights for the doctor tests\n" * 64
FAKE = ModelSpec(
    name="test-fake",
    description="test-only weights",
    commands=("test --needs-fake",),
    kind="file",
    env_var="FBMEM_TEST_FAKE_WEIGHTS",
    known_files=(KnownFile("fake_weights.pth", hashlib.sha256(WEIGHTS).hexdigest(), len(WEIGHTS), "test"),),
    how_to_get="curl -LO http://127.0.0.1/fake_weights.pth",
)
HUB = ModelSpec(
    name="test-hub",
    description="test-only hub model",
    commands=("test --needs-hub",),
    kind="hub",
    hub_id="owner/tiny-model",
    required=(("config.json",), ("model.safetensors", "pytorch_model.bin")),
    how_to_get="hf download owner/tiny-model",
)


@pytest.fixture
def fake_entries(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Path]:
    monkeypatch.delenv(FAKE.env_var, raising=False)
    monkeypatch.setenv("FBMEM_MODELS", str(tmp_path / "no-models-here"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    register_model(FAKE)
    register_model(HUB)
    yield tmp_path
    unregister_model(FAKE.name)
    unregister_model(HUB.name)


def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_file_model_present_absent_corrupt(fake_entries: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tmp = fake_entries
    absent = check_model(FAKE)
    assert absent.status == "missing" and "$FBMEM_TEST_FAKE_WEIGHTS (unset)" in absent.looked_in
    assert absent.to_dict()["how_to_get"] == FAKE.how_to_get

    good = _write(tmp / "w" / "fake_weights.pth", WEIGHTS)
    monkeypatch.setenv(FAKE.env_var, str(good))
    present = check_model(FAKE)
    assert present.status == "ok" and present.location == str(good)
    assert present.files[0].sha256 == FAKE.known_files[0].sha256 and present.size_bytes == len(WEIGHTS)
    assert present.to_dict()["how_to_get"] is None

    # The env var may name the directory that holds the file.
    monkeypatch.setenv(FAKE.env_var, str(good.parent))
    assert check_model(FAKE).status == "ok"

    flipped = _write(tmp / "bad" / "fake_weights.pth", WEIGHTS[:-1] + b"X")  # same size, wrong bytes
    monkeypatch.setenv(FAKE.env_var, str(flipped))
    corrupt = check_model(FAKE)
    assert corrupt.status == "corrupt" and "differs from the published" in corrupt.detail
    assert check_model(FAKE, hash_files=False).status == "unverified"  # size alone cannot see it

    truncated = _write(tmp / "short" / "fake_weights.pth", WEIGHTS[:100])
    monkeypatch.setenv(FAKE.env_var, str(truncated))
    for hash_files in (True, False):  # a wrong size is caught without hashing
        short = check_model(FAKE, hash_files=hash_files)
        assert short.status == "corrupt" and "size 100 bytes" in short.detail

    monkeypatch.setenv(FAKE.env_var, str(tmp / "nowhere.pth"))
    gone = check_model(FAKE)
    assert gone.status == "missing" and "does not exist" in gone.detail

    # An explicit path wins over the env var; a renamed file is still recognised by its sha256.
    renamed = _write(tmp / "renamed.bin", WEIGHTS)
    by_hash = check_model(FAKE, path=str(renamed))
    assert by_hash.status == "ok" and "fake_weights.pth" in by_hash.detail
    other = check_model(FAKE, path=str(_write(tmp / "other.bin", b"something else")))
    assert other.status == "unverified" and "no published checksum" in other.detail


def test_default_locations_are_searched(fake_entries: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    models = fake_entries / "models"
    monkeypatch.setenv("FBMEM_MODELS", str(models))
    _write(models / "fake_weights.pth", WEIGHTS)
    found = check_model(FAKE)
    assert found.status == "ok" and found.location == str(models / "fake_weights.pth")


def _hub_file(repo: Path, snapshot: str, rel: str, data: bytes, *, lfs: bool, corrupt: bool = False) -> None:
    if lfs:
        etag = hashlib.sha256(data).hexdigest()
    else:
        etag = hashlib.sha1(f"blob {len(data)}\0".encode() + data).hexdigest()
    _write(repo / "blobs" / etag, data + (b"!" if corrupt else b""))
    link = repo / "snapshots" / snapshot / rel
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(os.path.relpath(repo / "blobs" / etag, link.parent))


def test_hub_model_in_the_hf_cache(fake_entries: Path) -> None:
    repo = fake_entries / "hf-cache" / "models--owner--tiny-model"
    assert check_model(HUB).status == "missing"
    _write(repo / "refs" / "main", b"abc123")
    _hub_file(repo, "abc123", "config.json", b'{"tiny": true}', lfs=False)
    partial = check_model(HUB)
    assert partial.status == "incomplete" and "model.safetensors or pytorch_model.bin" in partial.detail
    _hub_file(repo, "abc123", "pytorch_model.bin", b"\x00tensor bytes" * 50, lfs=True)
    whole = check_model(HUB)
    assert whole.status == "ok", whole.detail
    assert {Path(f.path).name for f in whole.files} == {"config.json", "pytorch_model.bin"}
    assert "LFS checksum" in whole.detail and "git blob sha1" in whole.detail
    # A plug-in that takes a path, not a hub id: doctor says which path to give it.
    pointed = check_model(dataclasses.replace(HUB, env_var="FBMEM_TEST_UNSET_HUB", pointer_needed=True))
    assert f"use it with FBMEM_TEST_UNSET_HUB={repo / 'snapshots' / 'abc123'}" in pointed.detail

    # A damaged blob (the bytes no longer hash to the name the hub gave them) is corrupt.
    _write(repo / "refs" / "main", b"def456")
    _hub_file(repo, "def456", "config.json", b'{"tiny": true}', lfs=False)
    _hub_file(repo, "def456", "model.safetensors", b"weights" * 40, lfs=True, corrupt=True)
    damaged = check_model(HUB)
    assert damaged.status == "corrupt" and "model.safetensors" in damaged.detail


def test_package_models_verify_against_the_wheel_record() -> None:
    check = check_model(get_model("efficientnet-lite0"))
    assert check.status == "ok" and "wheel RECORD" in check.detail
    assert check.files[0].sha256.startswith("57934424")  # the file name's hash prefix
    missing = ModelSpec("test-pkg", "x", (), "package", "pip install nothing", package="no-such-dist-fbmem",
                        required=(("x/y.bin",),))
    assert check_model(missing).status == "missing"


def test_report_exit_rules_and_commands(fake_entries: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    report = diagnose(["test-fake"], include_system=False)
    assert not report.ok and [m.name for m in report.failing] == ["test-fake"]
    assert report.commands() == [{"command": "test --needs-fake", "needs": ["test-fake"], "ready": False}]
    good = _write(fake_entries / "fake_weights.pth", WEIGHTS)
    assert diagnose(paths={"test-fake": str(good)}, include_system=False).ok
    with pytest.raises(PluginError, match="knows no model"):
        diagnose(["no-such-model"], include_system=False)


def test_cli_exit_codes_and_json(fake_entries: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    runner = CliRunner()
    app = build_app()
    missing = runner.invoke(app, ["doctor", "--model", "test-fake"])
    assert missing.exit_code == 1
    assert "test-fake" in missing.output and "curl -LO http://127.0.0.1/fake_weights.pth" in missing.output

    monkeypatch.setenv(FAKE.env_var, str(_write(fake_entries / "fake_weights.pth", WEIGHTS)))
    ok = runner.invoke(app, ["doctor", "--model", "test-fake", "--json"])
    assert ok.exit_code == 0, ok.output
    data = json.loads(ok.output)
    assert data["ok"] and data["models"][0]["status"] == "ok"
    assert data["system"]["torch"]["installed"] and "cuda_available" in data["system"]["torch"]
    assert data["packages"]["duckdb"]

    truncated = _write(fake_entries / "t" / "fake_weights.pth", WEIGHTS[:10])
    bad = runner.invoke(app, ["doctor", "--model", f"test-fake={truncated}", "--no-hash"])
    assert bad.exit_code == 1 and "corrupt" in bad.output


def test_builtin_sam_entry_checks_published_sizes(tmp_path: Path) -> None:
    fake_sam = _write(tmp_path / "sam_vit_b_01ec64.pth", b"not really SAM")
    out = subprocess.run(
        [sys.executable, "-m", "fbmem_data", "doctor", "--model", f"sam={fake_sam}", "--json"],
        capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 1, out.stderr
    sam = json.loads(out.stdout)["models"][0]
    assert sam["status"] == "corrupt" and "published 375042383" in sam["detail"]
    assert sam["how_to_get"].startswith("curl -LO https://dl.fbaipublicfiles.com/segment_anything/")


def test_doctor_does_not_import_torch_at_import() -> None:
    code = (
        "import sys\n"
        "import fbmem_data.doctor, fbmem_data.doctor.system, fbmem_data.fetch\n"
        "import fbmem_data.cli.doctor_cmds, fbmem_data.cli.fetch_cmds\n"
        "print('HEAVY', [m for m in ('torch', 'onnxruntime', 'httpx', 'PIL') if m in sys.modules])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert "HEAVY []" in out.stdout, out.stdout + out.stderr


def test_cuda_devices_are_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    # No GPU in CI: stand in for one to check what doctor reads and prints about it.
    import types

    import torch

    from fbmem_data.cli.doctor_cmds import _system_lines
    from fbmem_data.doctor.report import DoctorReport
    from fbmem_data.doctor.system import system_info

    props = types.SimpleNamespace(name="Fake H100", major=9, minor=0, total_memory=80 * 2**30)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda index: props)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda index: (60 * 2**30, 80 * 2**30))
    monkeypatch.setattr(torch.backends.cudnn, "version", lambda: 90100)
    info = system_info()
    assert info["torch"]["devices"] == [
        {"index": 0, "name": "Fake H100", "capability": "9.0", "total_gib": 80.0, "free_gib": 60.0}
    ]
    lines = _system_lines(DoctorReport(system=info, packages={"torch": torch.__version__}, models=[]))
    assert "  cuda:0  Fake H100 (sm 9.0), 80.0 GiB total, 60.0 GiB free" in lines


def test_required_files_may_be_globs(tmp_path: Path) -> None:
    spec = ModelSpec("test-glob", "x", (), "folder", "train it", required=(("*segment*.safetensors",), ("cfg.json",)))
    root = tmp_path / "lab"
    _write(root / "cfg.json", b"{}")
    assert check_model(spec, path=str(root)).status == "incomplete"
    _write(root / "lab_segmenter.safetensors", b"weights")
    found = check_model(spec, path=str(root))
    assert found.status == "unverified" and {Path(f.path).name for f in found.files} == {"cfg.json", "lab_segmenter.safetensors"}
