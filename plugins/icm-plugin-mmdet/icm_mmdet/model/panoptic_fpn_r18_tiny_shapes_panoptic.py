# The panoptic task's config: the same PanopticFPN and weights as det and inst, with the R-CNN keeping
# instances scored 0.5 or more, since mmdet's panoptic fusion (HeuristicFusionHead) fuses every instance
# the R-CNN keeps (mmdet's own PanopticFPN configs set rcnn.score_thr=0.6 for the same reason). Chosen by
# mmdet's own test loop on shapes val: PQ 0.798 at 0.5, 0.792 at det's 0.05. Its own forward: det and
# inst need the low threshold for mAP.
_base_ = ["panoptic_fpn_r18_tiny_shapes.py"]
model = dict(test_cfg=dict(rcnn=dict(score_thr=0.5)))
