from icm import hookimpl
from icm.registry import Lazy

# The shipped PanopticFPN's backbone computes icm-omni-features' split tensor: its stem and layer1
# are the feature codec's head (``split_weights``, read when that codec is built with seeded weights).
SPLIT_WEIGHTS = {"resnet18w32.layer1": "icm_mmdet:model/panoptic_fpn_r18_tiny_shapes.pth"}


@hookimpl
def icm_register_tasks(register):
    # By name with a lazy factory: `icm tasks` lists these without importing mmdet or torch. This is
    # each task's one declaration of its metrics; the adapters read it (TaskAdapter.registration).
    register("det", Lazy("icm_mmdet.adapter:DetAdapter"),
             metrics=['bbox_mAP', 'bbox_mAP_50', 'bbox_mAP_75'], primary="bbox_mAP", bd_name="BD-mAP",
             library="mmdet", split_weights=SPLIT_WEIGHTS, description="object detection (mmdet), COCO bbox mAP")
    register("inst", Lazy("icm_mmdet.adapter:InstAdapter"),
             metrics=['segm_mAP', 'segm_mAP_50', 'segm_mAP_75'], primary="segm_mAP", bd_name="BD-mAP",
             library="mmdet", description="instance segmentation (mmdet), COCO mask mAP")
    register("panoptic", Lazy("icm_mmdet.adapter:PanopticAdapter"),
             metrics=['PQ', 'SQ', 'RQ', 'PQ_th', 'PQ_st'], primary="PQ", library="mmdet",
             description="panoptic segmentation (mmdet PanopticFPN), PQ")
