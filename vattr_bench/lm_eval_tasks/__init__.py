"""vattr-bench's five task families as lm-evaluation-harness tasks (`vattr_math`, `vattr_science`,
`vattr_document`, `vattr_code`, `vattr_general`; the tag `vattr` runs all five) and their hard variants
(`vattr_math_hard` …; the tag `vattr_hard`), for lm-eval's own `hf-multimodal` model:

    lm_eval --model hf-multimodal --model_args pretrained=CHECKPOINT_FOLDER \\
        --apply_chat_template --tasks vattr --include_path $(vattr-bench lm-eval-tasks)

`TASKS_DIR` is the folder to give `--include_path`; `python -m vattr_bench.lm_eval_tasks` prints it.
See docs/lm-eval.md.
"""
from __future__ import annotations

from pathlib import Path

TASKS_DIR = Path(__file__).resolve().parent
TASKS = ("vattr_math", "vattr_science", "vattr_document", "vattr_code", "vattr_general")
HARD_TASKS = tuple(f"{task}_hard" for task in TASKS)  # the `<family>-hard` variants, tag vattr_hard


def task_manager():
    """An lm-eval TaskManager that knows the vattr tasks (for `lm_eval.simple_evaluate(task_manager=…)`)."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=str(TASKS_DIR))


__all__ = ["HARD_TASKS", "TASKS_DIR", "TASKS", "task_manager"]
