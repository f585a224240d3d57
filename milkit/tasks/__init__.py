"""Tasks (config group ``task/``): classification | survival; see ``milkit.tasks.base``."""
import warnings

with warnings.catch_warnings():  # torchsurv calls torch.jit.script at import, which torch >= 2.10 deprecates:
    # one FutureWarning on stderr of every command, nothing a user can act on (failures must stay one line)
    warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*", category=FutureWarning)
    import torchsurv  # noqa: F401

from milkit.tasks.base import Task, build_task, get_task_class, list_tasks, register_task  # noqa: E402
from milkit.tasks.classification import ClassificationTask  # noqa: E402
from milkit.tasks.survival import SurvivalTask  # noqa: E402

__all__ = ["ClassificationTask", "SurvivalTask", "Task", "build_task", "get_task_class", "list_tasks", "register_task"]
