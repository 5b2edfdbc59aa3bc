from icm import hookimpl
from icm.registry import Lazy


@hookimpl
def icm_register_tasks(register):
    # By name with a lazy factory: `icm tasks` lists these without importing mmdet or torch.
    # The metadata repeats the adapter's class attributes; tests/test_plugins.py checks they agree.
    register("det", Lazy("icm_mmdet.adapter:DetAdapter"),
             metrics=['bbox_mAP', 'bbox_mAP_50', 'bbox_mAP_75'], primary="bbox_mAP", library="mmdet",
             description="object detection (mmdet), COCO bbox mAP")
    register("inst", Lazy("icm_mmdet.adapter:InstAdapter"),
             metrics=['segm_mAP', 'segm_mAP_50', 'segm_mAP_75'], primary="segm_mAP", library="mmdet",
             description="instance segmentation (mmdet), COCO mask mAP")
    register("panoptic", Lazy("icm_mmdet.adapter:PanopticAdapter"),
             metrics=['PQ', 'SQ', 'RQ', 'PQ_th', 'PQ_st'], primary="PQ", library="mmdet",
             description="panoptic segmentation (mmdet PanopticFPN), PQ")
