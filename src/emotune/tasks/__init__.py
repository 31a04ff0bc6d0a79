"""What is predicted: each task type one module, registered by name (``TASKS``)."""

from .base import HIGHER_IS_BETTER, TASKS, Task, is_better, register_task
from .classification import CLASSIFICATION, Classification, classification_metrics
from .instruct import INSTRUCT
from .multilabel import MULTILABEL, MultiLabel, multilabel_metrics
from .multitask import SCORE, MultiHead, MultiTask, flat_labels, label_sets, task_for
from .regression import REGRESSION, Regression, RegressionHead, regression_metrics, target_statistics

__all__ = ["CLASSIFICATION", "INSTRUCT", "Classification", "HIGHER_IS_BETTER", "MULTILABEL", "MultiHead", "MultiLabel", "MultiTask", "SCORE", "REGRESSION", "Regression", "RegressionHead",
           "TASKS", "Task", "classification_metrics", "flat_labels", "is_better", "label_sets", "multilabel_metrics", "regression_metrics", "register_task",
           "target_statistics", "task_for"]
