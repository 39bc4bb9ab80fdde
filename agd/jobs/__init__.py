"""The jobs behind the command line, as plain functions with typed configs: the CLI (:mod:`agd.commands`)
only parses arguments and calls these; the tests and tools call them directly.

Layering (no module imports one above it): ``progress`` → ``search`` → ``train`` (training and evaluation)
→ ``baseline`` → ``compress`` (the main job); ``apply``, ``teachers``, ``demo`` and ``describe`` stand alone.
"""

from agd.jobs.apply import load_applicable_student, run_student_on_folder
from agd.jobs.baseline import hand_designed, random_within_budget, run_baseline_job
from agd.jobs.compress import format_compress, run_compress_job
from agd.jobs.demo import DemoConfig, run_demo
from agd.jobs.search import SearchJob, init_distributed, run_search_job
from agd.jobs.train import run_eval_job, run_train_job

__all__ = [
    "DemoConfig", "SearchJob", "format_compress", "hand_designed", "init_distributed", "load_applicable_student",
    "random_within_budget", "run_baseline_job", "run_compress_job", "run_demo", "run_eval_job",
    "run_search_job", "run_student_on_folder", "run_train_job",
]
