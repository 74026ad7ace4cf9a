"""The five families as lm-evaluation-harness tasks: lm-eval's own `hf-multimodal` model on vattr-tiny's
checkpoint, with its chat template, writes the traces `vattr-bench generate` writes on the same samples, and
its exact-match accuracy is generate's."""
import subprocess
import sys

import pytest
import yaml

lm_eval = pytest.importorskip("lm_eval", reason="lm-evaluation-harness is not installed: pip install -e '.[lm-eval]'")

from vattr_bench.benchmarks import FAMILIES  # noqa: E402
from vattr_bench.generate import generate_traces  # noqa: E402
from vattr_bench.lm_eval_tasks import HARD_TASKS, TASKS, TASKS_DIR, task_manager  # noqa: E402
from vattr_bench.lm_eval_tasks.utils import synthetic_dataset  # noqa: E402
from vattr_bench.models import TINY_CHECKPOINT, load_model  # noqa: E402


def test_every_family_is_a_task_and_the_include_path_is_printed():
    assert set(TASKS) == {f"vattr_{family}" for family in FAMILIES}
    for task in TASKS:
        config = yaml.safe_load((TASKS_DIR / f"{task}.yaml").read_text())
        assert config["task"] == task and config["dataset_kwargs"]["family"] == task.removeprefix("vattr_")
    for task in HARD_TASKS:  # each family's hard variant, from the same generators
        config = yaml.safe_load((TASKS_DIR / f"{task}.yaml").read_text())
        family = task.removeprefix("vattr_").removesuffix("_hard") + "-hard"
        assert config["task"] == task and config["dataset_kwargs"]["family"] == family
        assert synthetic_dataset(family, n_samples=1)["test"]["sample_id"] == [f"{family}-test-0-0"]
    assert set(TASKS) | set(HARD_TASKS) <= set(task_manager().all_tasks)
    printed = subprocess.run([sys.executable, "-m", "vattr_bench.lm_eval_tasks"], capture_output=True, text=True,
                             check=True).stdout.strip()
    assert printed == str(TASKS_DIR)


def test_documents_are_generate_samples_in_order():
    docs = synthetic_dataset("code", n_samples=3)["test"]
    assert docs["sample_id"] == ["code-test-0-0", "code-test-0-1", "code-test-0-2"]


@pytest.mark.slow
def test_lm_eval_accuracy_equals_generate(tmp_path):
    limit, family = 4, "document"
    out = lm_eval.simple_evaluate(model="hf-multimodal", model_args=f"pretrained={TINY_CHECKPOINT},dtype=float32",
                                  tasks=[f"vattr_{family}"], limit=limit, apply_chat_template=True, batch_size=1, device="cpu",
                                  task_manager=task_manager(), log_samples=True)
    logged = sorted(out["samples"][f"vattr_{family}"], key=lambda s: s["doc"]["index"])
    summary = generate_traces(load_model("vattr-tiny"), family, limit, tmp_path)
    records = [__import__("json").loads(line) for line in (tmp_path / "generations.jsonl").read_text().splitlines()]
    assert [s["doc"]["sample_id"] for s in logged] == [r["sample_id"] for r in records]
    # the same greedy traces, token for token as text, and the same verdict on each
    assert [s["resps"][0][0].strip() for s in logged] == [r["trace"] for r in records]
    assert [s["exact_match"] for s in logged] == [float(r["correct"]) for r in records]
    assert out["results"][f"vattr_{family}"]["exact_match,none"] == pytest.approx(summary[family]["accuracy"])
