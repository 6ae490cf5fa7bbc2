"""One device resolver for every stage and plug-in (fbmem_data/devices.py)."""

from __future__ import annotations

import pytest
import torch

from fbmem_data.devices import resolve_device
from fbmem_data.errors import DeviceError, InputError, PluginError


def test_auto_and_cpu() -> None:
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto") == resolve_device(None) == resolve_device("") == expected
    assert resolve_device("cpu") == "cpu"


@pytest.mark.parametrize(
    ("name", "message"), [("gpu", "not a torch device"), ("xla", "not supported by fbmem")]
)
def test_bad_names_are_one_error_that_both_old_callers_catch(name: str, message: str) -> None:
    with pytest.raises(DeviceError, match=message) as info:
        resolve_device(name)
    assert isinstance(info.value, InputError) and isinstance(info.value, PluginError)
    assert info.value.hint


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
def test_cuda_without_a_gpu_says_so() -> None:
    with pytest.raises(DeviceError, match="no CUDA device"):
        resolve_device("cuda:0")


def test_every_stage_uses_the_same_resolver() -> None:
    from fbmem_data.embed import base as embed_base
    from fbmem_data.generate import loading
    from fbmem_data.segment import base as segment_base

    assert (
        embed_base.resolve_device is segment_base.resolve_device is loading.resolve_device is resolve_device
    )
