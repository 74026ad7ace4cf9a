"""Attribution methods: the built-in baselines and plugin loading.

A method is named by a built-in name, by ``path/to/file.py:ClassName``, or by an entry point in the
``vattr_bench.methods`` group (``[project.entry-points."vattr_bench.methods"] my-method = "pkg.mod:Cls"``).

Method arguments (keyword arguments of the class's ``__init__``) follow the name after a ``:``, as
``key=value`` pairs separated by commas — the form lm-eval's ``--model_args`` takes, and nothing a shell
needs quoted:

    amortized:estimator=runs/qwen3.json
    path/to/file.py:ClassName:heads=16,normalize=true
    --method attention,amortized:estimator=E.json,random     (a list: see split_method_list)

A value is read as a bool (``true``/``false``), an int, a float, else a string; a parameter annotated as a
string or path keeps the text as written. A value cannot contain a comma. An argument the ``__init__`` does
not take is an error naming those it does take.
"""
from __future__ import annotations

import importlib.util
import inspect
import re
import typing
from dataclasses import dataclass, field
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
                                      InputXGradientMethod, IntegratedGradientsMethod, AttnLRPMethod, TAMMethod,
                                      CaptumAblation, Random, Uniform, RegionArea)}
ENTRY_POINT_GROUP = "vattr_bench.methods"


def available_methods() -> dict[str, str]:
    """name -> where it comes from, for `vattr-bench list`."""
    found = {name: "built-in" for name in BUILTIN}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        found.setdefault(ep.name, f"plugin ({ep.value})")
    return found


@dataclass(frozen=True)
class MethodSpec:
    """One parsed ``--method`` entry: ``name`` (a built-in or entry-point name; for a plugin file, the
    ``path/file.py:ClassName`` part), ``file`` (that plugin file, else None) and its ``arguments``, as written."""

    name: str
    file: Path | None = None
    arguments: dict[str, str] = field(default_factory=dict)


_IDENTIFIER = r"[A-Za-z_]\w*"
_PLUGIN_FILE = re.compile(rf"^(?P<file>.+?\.py):(?P<cls>{_IDENTIFIER})(?::(?P<args>.*))?$", re.S)
_NAMED = re.compile(r"^(?P<name>[^:]+?)(?::(?P<args>.*))?$", re.S)
_ARGUMENT = re.compile(rf"^\s*{_IDENTIFIER}\s*=")


def parse_method_spec(spec: str) -> MethodSpec:
    """``name[:key=value,…]`` or ``path/file.py:ClassName[:key=value,…]`` → MethodSpec; a UserError for a
    malformed argument list (no ``=``, an empty or repeated key)."""
    spec = spec.strip()
    plugin = _PLUGIN_FILE.match(spec)
    match = plugin or _NAMED.match(spec)
    if match is None:
        raise UserError(f"method spec {spec!r} is empty")
    name = f"{match['file']}:{match['cls']}" if plugin else match["name"].strip()
    arguments: dict[str, str] = {}
    if match["args"] is not None:
        for part in match["args"].split(","):
            key, eq, value = part.partition("=")
            key = key.strip()
            if not eq or not re.fullmatch(_IDENTIFIER, key):
                raise UserError(f"method {name!r}: argument {part.strip()!r} is not key=value (arguments follow the "
                                "name after ':', as name:key=value,key2=value2)")
            if key in arguments:
                raise UserError(f"method {name!r}: argument {key!r} given twice")
            arguments[key] = value.strip()
    return MethodSpec(name, Path(match["file"]) if plugin else None, arguments)


def split_method_list(text: str) -> list[str]:
    """A comma list of method specs → one spec per method, the commas between one method's arguments kept:
    ``attention,amortized:estimator=E.json,heads=16,random`` → ``["attention",
    "amortized:estimator=E.json,heads=16", "random"]``. An entry that starts with ``key=`` continues the
    arguments of the method before it; a method name never holds ``=``."""
    specs: list[str] = []
    for part in text.split(","):
        if not part.strip():
            continue
        if _ARGUMENT.match(part):
            if not specs or parse_method_spec(specs[-1]).arguments == {}:
                after = f"after {specs[-1].strip()!r}, which has no ':' before its arguments" if specs else "first"
                raise UserError(f"--method: argument {part.strip()!r} comes {after} (write name:key=value,…)")
            specs[-1] += "," + part
        else:
            specs.append(part)
    return [s.strip() for s in specs]


def load_method(spec: str):
    """An instance of the method named by ``spec`` (see the module's docstring for the grammar), built with
    the spec's arguments; a clear error for anything else."""
    parsed = parse_method_spec(spec)
    if parsed.file is not None:
        cls = _class_from_file(str(parsed.file), parsed.name.rsplit(":", 1)[1])
    elif parsed.name in BUILTIN:
        cls = BUILTIN[parsed.name]
    else:
        matches = [ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name == parsed.name]
        if not matches:
            raise ValueError(f"unknown method {parsed.name!r}: not built-in ({', '.join(BUILTIN)}), not an installed "
                             f"'{ENTRY_POINT_GROUP}' entry point, and not path/file.py:ClassName")
        try:
            cls = matches[0].load()
        except Exception as e:  # a plugin that cannot even import is reported, not raised through
            raise UserError(f"method plugin {parsed.name!r} ({matches[0].value}) failed to import: "
                            f"{type(e).__name__}: {e}") from e
    if isinstance(cls, type):
        method = _instantiate(parsed.name, cls, parsed.arguments)
    elif parsed.arguments:
        raise UserError(f"method {parsed.name!r} takes no arguments: its entry point is an object, not a class")
    else:
        method = cls
    if not callable(getattr(method, "attribute", None)):
        raise ValueError(f"method {parsed.name!r} has no attribute(ctx) method")
    if not getattr(method, "name", None):
        method.name = parsed.name
    return method


def _instantiate(name: str, cls: type, arguments: dict[str, str]):
    """``cls(**arguments)``, each value converted (`_convert`); a UserError naming an argument the class does
    not take, or a parameter without a default that the spec does not give."""
    try:
        signature = inspect.signature(cls)
    except ValueError:
        signature = None  # no signature to read (a class implemented in C): let the call say
    kwargs = dict(arguments)
    if signature is not None:
        params = {p.name: p for p in signature.parameters.values()
                  if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
        if not any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values()):
            unknown = [key for key in arguments if key not in params]
            if unknown:
                takes = f"it takes {', '.join(params)}" if params else "it takes no arguments"
                raise UserError(f"method {name!r}: {cls.__name__} has no argument {', '.join(map(repr, unknown))}; "
                                f"{takes}")
        hints = _type_hints(cls)
        kwargs = {key: _convert(name, key, value, hints.get(key)) for key, value in arguments.items()}
        try:
            signature.bind(**kwargs)
        except TypeError as e:
            raise UserError(f"method {name!r}: {cls.__name__}() needs arguments ({e}): give them in the spec as "
                            f"{name}:key=value, or give every __init__ parameter a default") from e
    try:
        return cls(**kwargs)
    except Exception as e:  # a plugin may fail any way it likes while being built: say which, and how
        raise UserError(f"method {name!r}: {cls.__name__}() failed: {type(e).__name__}: {e}") from e


def _type_hints(cls: type) -> dict:
    try:
        return typing.get_type_hints(cls.__init__)
    except Exception:  # an annotation that does not resolve: values are read by their look alone
        return {}


def _convert(name: str, key: str, text: str, hint) -> object:
    """A spec's value as the parameter wants it: the text itself for a str or path parameter; else a bool
    (true/false), an int, a float, or the text; a UserError when the parameter is annotated bool, int or float
    and the text is not one."""
    kinds = {hint} if isinstance(hint, type) else {t for t in typing.get_args(hint) if isinstance(t, type)}
    kinds.discard(type(None))
    if kinds & {str, Path} or any(issubclass(k, Path) for k in kinds):
        return Path(text) if kinds <= {Path} else text
    value: object = text
    if text.lower() in ("true", "false"):
        value = text.lower() == "true"
    else:
        for number in (int, float):
            try:
                value = number(text)
                break
            except ValueError:
                pass
    numeric = {int: (int,), float: (int, float), bool: (bool,)}
    wanted = [k for k in kinds if k in numeric]
    if wanted and not any(isinstance(value, numeric[k]) and not (k is not bool and isinstance(value, bool))
                          for k in wanted):
        raise UserError(f"method {name!r}: argument {key}={text!r} is not {' or '.join(k.__name__ for k in wanted)}")
    return float(value) if wanted == [float] else value


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
           "MethodSpec", "available_methods", "is_reference", "load_method", "parse_method_spec", "reads_ground_truth",
           "split_method_list"]
