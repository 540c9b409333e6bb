"""MLflow tracking: the only package that imports mlflow (lazily, when a run is tracked), one module per
concern:

* ``store`` — where the store is (URI resolution), whether it answers, clients, experiments, logged
  checkpoints (for ``resume=<run id>`` and ``rnnlab.generate run=<run id>``);
* ``run`` — ``MlflowTracker``, the logger of one run (a callback of the training loop);
* ``sweep`` — ``SweepCallback``, the Hydra callback that nests a sweep's trials under one parent run.
"""

from .run import MlflowTracker, flatten
from .store import check_reachable, connect, download_checkpoint, resolve_uri, ui_command, ui_link
from .sweep import SweepCallback, find_parent_run, sweep_id

__all__ = ["MlflowTracker", "SweepCallback", "check_reachable", "connect", "download_checkpoint", "find_parent_run",
           "flatten", "resolve_uri", "sweep_id", "ui_command", "ui_link"]
