"""The lab data set: deterministic from its seed, planted groups as documented."""

from __future__ import annotations

import numpy as np
import pytest

from fbmem_data.lab.dataset import LabConfig, make_lab_dataset

SMALL = LabConfig(vm_groups=2, fm_groups=1, fm_images=3, bm_groups=1, bm_images=3, template_groups=1,
                  template_images=3, unique_images=6, control_prompts=3, heldout_images=2)


def test_same_seed_gives_identical_bytes() -> None:
    a = make_lab_dataset(7, SMALL)
    b = make_lab_dataset(7, SMALL)
    assert [p.text for p in a.prompts] == [p.text for p in b.prompts]
    assert {k: im.png_bytes() for k, im in a.images.items()} == {k: im.png_bytes() for k, im in b.images.items()}
    assert [im.mask_png_bytes() for im in a.heldout] == [im.mask_png_bytes() for im in b.heldout]


def test_bm_object_size_changes_only_the_bm_objects() -> None:
    """A smaller BM object range shrinks the BM groups' objects, over the same backgrounds; every other
    image is byte for byte the one the default draws (the range does not shift the random stream)."""
    from dataclasses import replace

    base = make_lab_dataset(3, SMALL)
    small = make_lab_dataset(3, replace(SMALL, bm_object_size=(0.1, 0.15)))
    assert small.config.bm_object_size == (0.1, 0.15)
    for key, image in base.images.items():
        if key.startswith("bm"):
            assert small.images[key].mask.mean() < image.mask.mean()
            assert small.images[key].spec["background"] == image.spec["background"]
        else:
            assert small.images[key].png_bytes() == image.png_bytes(), key
    assert LabConfig.from_dict({"bm_object_size": [0.1, 0.15]}).bm_object_size == (0.1, 0.15)


def test_other_seed_gives_other_images() -> None:
    a = make_lab_dataset(1, SMALL)
    b = make_lab_dataset(2, SMALL)
    assert a.images["vm0"].png_bytes() != b.images["vm0"].png_bytes()


def test_planted_groups_have_their_structure() -> None:
    ds = make_lab_dataset(0, SMALL)
    groups = {p.key: p for p in ds.prompts}
    fm = [ds.images[k] for k in groups["fm0"].image_keys]
    bm = [ds.images[k] for k in groups["bm0"].image_keys]
    # FM: the same object pixels and mask under every background; the backgrounds differ.
    assert all(np.array_equal(im.mask, fm[0].mask) for im in fm)
    assert all(np.array_equal(im.pixels[im.mask], fm[0].pixels[fm[0].mask]) for im in fm)
    assert not np.array_equal(fm[0].pixels[~fm[0].mask], fm[1].pixels[~fm[1].mask])
    # BM: the same background wherever both images show background; the objects differ.
    both = ~bm[0].mask & ~bm[1].mask
    assert np.array_equal(bm[0].pixels[both], bm[1].pixels[both])
    assert not np.array_equal(bm[0].mask, bm[1].mask)
    # Controls are never trained and never equal a training caption.
    trained = {p.text for p in ds.prompts if p.prompt_set != "lab-control"}
    controls = [p for p in ds.prompts if p.group == "control"]
    assert controls and all(p.text not in trained and not p.image_keys for p in controls)
    # VM duplicates appear `vm_repeats` times in the training examples.
    examples = ds.training_examples()
    assert sum(1 for k, _ in examples if k == "vm0") == SMALL.vm_repeats


@pytest.mark.parametrize("key", ["vm0", "fm0-00", "u0000"])
def test_masks_are_exact_and_nonempty(key: str) -> None:
    ds = make_lab_dataset(0, SMALL)
    im = ds.images[key]
    assert im.pixels.shape == (64, 64, 3) and im.pixels.dtype == np.uint8
    assert im.mask.dtype == bool and 0 < im.mask.sum() < 64 * 64


def test_writing_to_a_workspace_is_complete_and_idempotent(workspace) -> None:
    from fbmem_data.lab.ingest import write_lab_dataset

    ds = make_lab_dataset(0, SMALL)
    first = write_lab_dataset(workspace, ds)
    n_images = len({im.png_bytes() for im in ds.images.values()})
    assert first["images"] == n_images and first["lab_truth"] == len(ds.prompts)
    assert write_lab_dataset(workspace, ds) == dict.fromkeys(first, 0)
    groups = workspace.sql(
        "SELECT t.planted_group, count(DISTINCT l.image_id) AS n FROM lab_truth t "
        "JOIN train_links l USING (prompt_id) WHERE l.relation = 'lab' GROUP BY 1", output="polars"
    )
    counts = dict(zip(groups["planted_group"], groups["n"], strict=True))
    assert counts["FM"] == SMALL.fm_images and counts["VM"] == SMALL.vm_groups
    assert workspace.count("lab_masks") == n_images
    assert workspace.sql("SELECT count(*) AS n FROM images WHERE role = 'train' AND status = 'ok'").column("n")[0].as_py() == n_images
    # the stored bytes are the data set's bytes (image_id = sha256 of the file)
    vm_id = workspace.sql("SELECT train_image_ids[1] AS i FROM lab_truth WHERE group_key = 'vm0'").column("i")[0].as_py()
    assert workspace.image_path(vm_id).read_bytes() == ds.images["vm0"].png_bytes()
