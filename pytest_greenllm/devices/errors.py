"""Our device errors, and the one place where NVML's errors are mapped onto them.

Zeus's ``_handle_nvml_errors`` is the model: callers catch a small hierarchy that says
what to do, never the dozens of ``pynvml.NVMLError_*`` classes.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from pytest_greenllm.hints import LEAVE_CLOCKS, Hint, HintedError

# NVML return codes (nvml.h), as pynvml names them NVML_ERROR_*.
NVML_ERROR_NOT_SUPPORTED = 3
NVML_ERROR_NO_PERMISSION = 4
NVML_ERROR_DRIVER_NOT_LOADED = 9
NVML_ERROR_LIBRARY_NOT_FOUND = 12
NVML_ERROR_GPU_IS_LOST = 15
NVML_ERROR_LIB_RM_VERSION_MISMATCH = 18

HOW_TO_LOCK = (
    "run as root (locking clocks and setting power limits need it) with persistence mode on "
    "(`nvidia-smi -pm 1`)"
)
USE_OTHER_DEVICE = Hint("device", "rapl|none", ", or use {flag}")


class DeviceError(HintedError):
    """A device call failed; ``code`` is the NVML return code where there is one."""

    def __init__(self, message: str, code: int | None = None, hint: Hint | None = None) -> None:
        super().__init__(message, hint)
        self.code = code


class DeviceUnavailable(DeviceError):
    """The device kind asked for cannot be used here; the message says what to do."""


class NotSupported(DeviceError):
    """The device or driver does not offer this call."""


class NoPermission(DeviceError):
    """The call needs root or CAP_SYS_ADMIN."""


class DeviceLost(DeviceError):
    """The GPU fell off the bus or needs a reset."""


class DriverUnavailable(DeviceError):
    """No NVIDIA driver or NVML library answers here."""


_BY_CODE: dict[int, type[DeviceError]] = {
    NVML_ERROR_NOT_SUPPORTED: NotSupported,
    NVML_ERROR_NO_PERMISSION: NoPermission,
    NVML_ERROR_GPU_IS_LOST: DeviceLost,
    NVML_ERROR_DRIVER_NOT_LOADED: DriverUnavailable,
    NVML_ERROR_LIBRARY_NOT_FOUND: DriverUnavailable,
    NVML_ERROR_LIB_RM_VERSION_MISMATCH: DriverUnavailable,
}

_ADVICE: dict[type[DeviceError], tuple[str, Hint | None]] = {
    NoPermission: (HOW_TO_LOCK, LEAVE_CLOCKS),
    NotSupported: ("this GPU or driver does not offer it", None),
    DeviceLost: ("the GPU needs a reset (`nvidia-smi -r`) or a reboot", None),
    DriverUnavailable: ("install the NVIDIA driver", USE_OTHER_DEVICE),
}


@contextmanager
def nvml_errors(nvml: Any, what: str) -> Iterator[None]:
    """Turn ``nvml.NVMLError`` raised inside into our errors, naming ``what`` was tried."""
    try:
        yield
    except nvml.NVMLError as e:
        code = getattr(e, "value", None)
        kind = _BY_CODE.get(code, DeviceError) if isinstance(code, int) else DeviceError
        advice, hint = _ADVICE.get(kind, ("", None))
        message = f"{what}: {e}" + (f"; {advice}" if advice else "")
        raise kind(message, code, hint) from e
