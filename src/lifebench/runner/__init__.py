"""Plan and run experiments: expand a request into jobs, skip what is done, run the rest."""

from lifebench.runner.plan import Job, expand
from lifebench.runner.run import JobResult, RunOptions, plan_status, run_jobs

__all__ = ["Job", "JobResult", "RunOptions", "expand", "plan_status", "run_jobs"]
