from icm import hookimpl
from icm.registry import Lazy


@hookimpl
def icm_register_tasks(register):
    # By name with a lazy factory: `icm tasks` lists these without importing mmseg or torch.
    # The metadata repeats the adapter's class attributes; tests/test_plugins.py checks they agree.
    register("seg", Lazy("icm_mmseg.adapter:SegAdapter"), metrics=['mIoU', 'aAcc', 'mAcc'], primary="mIoU",
             library="mmseg", description="semantic segmentation (mmseg), mIoU")
