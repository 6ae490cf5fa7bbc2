"""One place that turns a `--device` value into a torch device string (every stage and plug-in uses it)."""

from __future__ import annotations

from fbmem_data.errors import DeviceError


def resolve_device(device: str | None = "auto") -> str:
    """Turn "auto" (or None / "") into "cuda" when a GPU is visible, else "cpu"; check any other name.

    Args:
        device: "auto", "cpu", "cuda", "cuda:N" or "mps".

    Returns:
        The device as torch writes it ("cpu", "cuda", "cuda:1" ...).

    Raises:
        DeviceError (an InputError and a PluginError): the name is not a torch device, names a CUDA
            device torch does not see, or a device type fbmem does not run on.
    """
    if device == "cpu":  # no torch import for CPU-only plug-ins (a worker process starts faster)
        return device
    import torch

    if device in (None, "", "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise DeviceError(
            f"device {device!r} is not a torch device", hint="use auto, cpu, cuda or cuda:N"
        ) from exc
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(
                f"device {device!r} was asked for, but torch sees no CUDA device", hint="use --device cpu"
            )
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise DeviceError(
                f"device {device!r} was asked for, but only {torch.cuda.device_count()} CUDA device(s) exist",
                hint="use cuda or cuda:0",
            )
    elif parsed.type not in ("cpu", "mps"):
        raise DeviceError(
            f"device type {parsed.type!r} is not supported by fbmem", hint="use auto, cpu or cuda"
        )
    return str(parsed)
