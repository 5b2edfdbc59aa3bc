from icm import hookimpl
from icm.registry import Lazy


@hookimpl
def icm_register_tasks(register):
    # By name with a lazy factory: `icm tasks` lists these without importing mmpose or torch.
    # This is the task's one declaration of its metrics; the adapter reads it (TaskAdapter.registration).
    register("pose", Lazy("icm_mmpose.adapter:PoseAdapter"),
             metrics=['AP', 'AP50', 'AP75', 'AR'], primary="AP", library="mmpose",
             description="top-down keypoints on ground-truth boxes (mmpose SimpleBaseline), COCO keypoint AP")
