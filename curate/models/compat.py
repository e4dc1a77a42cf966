"""torchvision on CPU-only torch: make its pure-Python parts importable. Does nothing elsewhere.

The registry's torchvision 0.28 wheel is a CUDA build. Next to the CPU build of torch 2.13 its
compiled ops library does not load, and ``import torchvision`` (hence ``import open_clip``) fails
with ``operator torchvision::nms does not exist``: its fake-tensor registrations need those op
schemas. Defining the two schemas lets transforms, models and everything open_clip uses import.
``torchvision.ops.nms`` and ``torchvision.io`` decoding still do not work; curate decodes with
Pillow. Where torchvision imports normally (a matching build, e.g. on a GPU machine) this module
changes nothing. Every module that imports open_clip or torchvision calls
:func:`ensure_torchvision` first, so it also runs inside Ray workers.
"""

from __future__ import annotations

import sys

MISSING_OPS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
)
_library = None  # the torch.library.Library holding our schemas; must stay alive


def ensure_torchvision() -> bool:
    """Import torchvision, registering the missing op schemas only if needed; True if patched."""
    global _library
    if _library is not None or "torchvision.transforms" in sys.modules:
        return _library is not None
    try:
        import torchvision
    except RuntimeError as err:
        if "torchvision::" not in str(err):
            raise
        _forget_partial_import()
    else:
        return False
    import torch

    _library = torch.library.Library("torchvision", "DEF")
    for schema in MISSING_OPS:
        _library.define(schema)
    import torchvision  # noqa: F401

    return True


def _forget_partial_import() -> None:
    """Drop the half-imported torchvision modules a failed import leaves behind."""
    for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
        del sys.modules[name]
