"""What is predicted: each task type one module, registered by name (``TASKS``)."""

from .base import HIGHER_IS_BETTER, TASKS, Task, is_better, register_task, task_for
from .classification import CLASSIFICATION, Classification, classification_metrics
from .regression import REGRESSION, Regression, RegressionHead, regression_metrics, target_statistics

__all__ = ["CLASSIFICATION", "Classification", "HIGHER_IS_BETTER", "REGRESSION", "Regression", "RegressionHead",
           "TASKS", "Task", "classification_metrics", "is_better", "regression_metrics", "register_task",
           "target_statistics", "task_for"]
