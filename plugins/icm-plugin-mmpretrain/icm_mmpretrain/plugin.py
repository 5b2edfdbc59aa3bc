from icm import hookimpl
from icm.registry import Lazy


@hookimpl
def icm_register_tasks(register):
    # By name with a lazy factory: `icm tasks` lists these without importing mmpretrain or torch.
    # The metadata repeats the adapter's class attributes; tests/test_plugins.py checks they agree.
    register("cls", Lazy("icm_mmpretrain.adapter:ClsAdapter"), metrics=['top1', 'top5'], primary="top1",
             library="mmpretrain", description="image classification (mmpretrain), top-1 / top-5 accuracy")
