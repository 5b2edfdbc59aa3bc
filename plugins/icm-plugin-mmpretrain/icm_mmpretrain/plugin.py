from icm import hookimpl
from icm.registry import Lazy


@hookimpl
def icm_register_tasks(register):
    # By name with a lazy factory: `icm tasks` lists these without importing mmpretrain or torch.
    # This is the task's one declaration of its metrics; the adapter reads it (TaskAdapter.registration).
    register("cls", Lazy("icm_mmpretrain.adapter:ClsAdapter"), metrics=["top1", "top5"], primary="top1",
             bd_name="BD-acc", library="mmpretrain",
             description="image classification (mmpretrain), top-1 / top-5 accuracy")
