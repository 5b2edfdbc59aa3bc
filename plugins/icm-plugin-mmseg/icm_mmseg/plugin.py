from icm import hookimpl
from icm.registry import Lazy


@hookimpl
def icm_register_tasks(register):
    # By name with a lazy factory: `icm tasks` lists these without importing mmseg or torch.
    # This is the task's one declaration of its metrics; the adapter reads it (TaskAdapter.registration).
    register("seg", Lazy("icm_mmseg.adapter:SegAdapter"), metrics=['mIoU', 'aAcc', 'mAcc'], primary="mIoU",
             library="mmseg", description="semantic segmentation (mmseg), mIoU")
