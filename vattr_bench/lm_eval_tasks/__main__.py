"""`python -m vattr_bench.lm_eval_tasks`: print the folder to pass to `lm_eval --include_path`."""
from . import TASKS_DIR

print(TASKS_DIR)
