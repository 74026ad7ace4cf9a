"""Attribution methods: the built-in baselines and plugin loading.

A method is named by a built-in name, by ``path/to/file.py:ClassName``, or by an entry point in the
``vattr_bench.methods`` group (``[project.entry-points."vattr_bench.methods"] my-method = "pkg.mod:Cls"``).
"""
from __future__ import annotations

import importlib.util
import inspect
from importlib.metadata import entry_points
from pathlib import Path

from ..errors import UserError
from .amortized import Amortized
from .attnlrp import AttnLRPMethod
from .base import (AttributionContext, AttributionMethod, AttributionMethodProtocol, GroundTruthAccessError,
                   is_reference, reads_ground_truth)
from .baselines import Ablation, Attention, AttentionLast, Random, RegionArea, Rollout, Uniform
from .captum_ablation import CaptumAblation
from .gradients import InputXGradientMethod, IntegratedGradientsMethod, SaliencyMethod
from .tam import TAMMethod

BUILTIN = {cls.name: cls for cls in (Amortized, Ablation, Attention, AttentionLast, Rollout, SaliencyMethod,
                                      InputXGradientMethod, IntegratedGradientsMethod, AttnLRPMethod, TAMMethod, CaptumAblation, Random, Uniform,
                                      RegionArea)}
ENTRY_POINT_GROUP = "vattr_bench.methods"


def available_methods() -> dict[str, str]:
    """name -> where it comes from, for `vattr-bench list`."""
    found = {name: "built-in" for name in BUILTIN}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        found.setdefault(ep.name, f"plugin ({ep.value})")
    return found


def load_method(spec: str):
    """An instance of the method named by ``spec``; a clear error for anything else."""
    spec = spec.strip()
    if spec in BUILTIN:
        return BUILTIN[spec]()
    if ":" in spec and spec.split(":", 1)[0].endswith(".py"):
        cls = _class_from_file(*spec.rsplit(":", 1))
    else:
        matches = [ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name == spec]
        if not matches:
            raise ValueError(f"unknown method {spec!r}: not built-in ({', '.join(BUILTIN)}), not an installed "
                             f"'{ENTRY_POINT_GROUP}' entry point, and not path/file.py:ClassName")
        try:
            cls = matches[0].load()
        except Exception as e:  # a plugin that cannot even import is reported, not raised through
            raise UserError(f"method plugin {spec!r} ({matches[0].value}) failed to import: "
                            f"{type(e).__name__}: {e}") from e
    method = _instantiate(spec, cls) if isinstance(cls, type) else cls
    if not callable(getattr(method, "attribute", None)):
        raise ValueError(f"method {spec!r} has no attribute(ctx) method")
    if not getattr(method, "name", None):
        method.name = spec
    return method


def _instantiate(spec: str, cls: type):
    """``cls()``: a method is built without arguments (its settings are its defaults)."""
    try:
        inspect.signature(cls).bind()
    except TypeError as e:
        raise UserError(f"method {spec!r}: {cls.__name__}() needs arguments ({e}); a method is built without "
                        "any: give every __init__ parameter a default") from e
    except ValueError:
        pass  # no signature to read (a class implemented in C): let the call say
    try:
        return cls()
    except Exception as e:  # a plugin may fail any way it likes while being built: say which, and how
        raise UserError(f"method {spec!r}: {cls.__name__}() failed: {type(e).__name__}: {e}") from e


def _class_from_file(path: str, class_name: str):
    file = Path(path)
    if not file.is_file():
        raise ValueError(f"method plugin file not found: {file}")
    module_spec = importlib.util.spec_from_file_location(f"vattr_plugin_{file.stem}", file)
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except Exception as e:  # a plugin that cannot even import is reported, not raised through
        raise ValueError(f"method plugin {file} failed to import: {type(e).__name__}: {e}") from e
    if not hasattr(module, class_name):
        raise ValueError(f"method plugin {file} has no class {class_name!r}")
    return getattr(module, class_name)


__all__ = ["AttributionContext", "AttributionMethod", "AttributionMethodProtocol", "BUILTIN", "GroundTruthAccessError",
           "available_methods", "is_reference", "load_method", "reads_ground_truth"]
