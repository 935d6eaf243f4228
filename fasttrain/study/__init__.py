"""Study suites: named runs (a config plus overrides) grouped into comparisons, run in order and resumable."""

from fasttrain.study.plan import PlannedRun, plan_suite, train_command
from fasttrain.study.suite import Comparison, RunSpec, Suite, SuiteError, find_suite, load_suite

__all__ = [
    "Comparison",
    "PlannedRun",
    "RunSpec",
    "Suite",
    "SuiteError",
    "find_suite",
    "load_suite",
    "plan_suite",
    "train_command",
]
