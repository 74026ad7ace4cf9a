"""The adapter interface declares what the rest of the package calls on a model."""
import ast
from pathlib import Path

from vattr_bench.models.adapter import VisionLanguageModel

PACKAGE = Path(__file__).parents[1] / "vattr_bench"
# the adapter's own implementation, and the two methods documented to need a Hugging Face adapter's internals
OUTSIDE_THE_CONTRACT = {"models/hf.py", "models/random_init.py",
                        "methods/captum_ablation.py", "methods/attnlrp.py",
                        "models/__init__.py"}  # the loader: its `model` is the torch model it wraps
# reads guarded by hasattr, for a Hugging Face adapter only: perf's decoder parameter count
GUARDED = {("perf.py", "model")}


def _model_attributes(tree: ast.AST) -> set[str]:
    """X of every `model.X`, `ctx.model.X`, `self.model.X` and `self._model.X` in one module."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            owner = node.value
            if isinstance(owner, ast.Name) and owner.id == "model":
                found.add(node.attr)
            elif isinstance(owner, ast.Attribute) and owner.attr in ("model", "_model") and \
                    isinstance(owner.value, ast.Name) and owner.value.id in ("ctx", "self"):
                found.add(node.attr)
    return found


def test_everything_called_on_a_model_is_declared_by_the_adapter_interface():
    declared = set(dir(VisionLanguageModel)) | set(VisionLanguageModel.__annotations__)
    called = {}
    for file in PACKAGE.rglob("*.py"):
        relative = file.relative_to(PACKAGE).as_posix()
        if relative in OUTSIDE_THE_CONTRACT or relative.startswith(("models/tiny/", "models/capture/")):
            continue
        for attribute in _model_attributes(ast.parse(file.read_text(encoding="utf-8"))):
            if (relative, attribute) not in GUARDED:
                called.setdefault(attribute, []).append(relative)
    assert {"trace_from_ids", "prepare", "token_logprobs"} <= set(called)  # the scan does see the calls
    undeclared = {name: files for name, files in called.items() if name not in declared}
    assert not undeclared, f"called on a model but not declared in VisionLanguageModel: {undeclared}"


def test_the_shipped_adapter_implements_every_abstract_method(tiny):
    assert {"trace_from_ids", "decode"} <= VisionLanguageModel.__abstractmethods__
    assert isinstance(tiny, VisionLanguageModel)
    ids = tiny.generate_ids(tiny.prepare(*_sample()), 16)
    trace = tiny.trace_from_ids(tiny.prepare(*_sample()), ids)
    assert trace.token_ids == ids and trace.text == tiny.decode(ids) and len(trace.logprobs) == len(ids)
    assert isinstance(tiny.eos_ids, set) and not set(ids) & tiny.eos_ids


def _sample():
    from vattr_bench.benchmarks import synthetic_sample

    s = synthetic_sample("math", 0)
    return s.image, s.prompt
