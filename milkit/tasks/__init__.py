"""Tasks (config group ``task/``): classification | survival; see ``milkit.tasks.base``."""
from milkit.tasks.base import Task, build_task, get_task_class, list_tasks, register_task
from milkit.tasks.classification import ClassificationTask
from milkit.tasks.survival import SurvivalTask

__all__ = ["ClassificationTask", "SurvivalTask", "Task", "build_task", "get_task_class", "list_tasks", "register_task"]
