"""One device helper: ``auto`` follows the hardware, a named device is taken as given, and the light
modules that use it do not import torch until a model is set up."""

from __future__ import annotations

import subprocess
import sys

import torch

from curate.device import pick_device


def test_auto_is_the_gpu_when_there_is_one_else_the_cpu() -> None:
    expected = torch.device("cuda:0") if torch.cuda.is_available() else torch.device("cpu")
    assert pick_device() == pick_device("auto") == expected


def test_auto_spreads_ranks_over_the_visible_gpus() -> None:
    if torch.cuda.is_available():
        assert pick_device("auto", rank=torch.cuda.device_count()) == torch.device("cuda:0")
    else:
        assert pick_device("auto", rank=3) == torch.device("cpu")


def test_a_named_device_is_taken_as_given() -> None:
    assert pick_device("cpu") == torch.device("cpu")
    assert pick_device("cuda:1") == torch.device("cuda", 1)  # named, not checked: torch fails when used


def test_light_modules_do_not_import_torch() -> None:
    modules = [
        "curate.device",
        "curate.signals.clip",
        "curate.signals.classifier",
        "curate.enrich.recaption",
        "curate.recipe",
    ]
    code = f"import sys\nfor m in {modules}: __import__(m)\nprint('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
