# A small PanopticFPN for the 128x128 `shapes` benchmark: ResNet-18 at quarter width (base 32),
# FPN with 64 channels. One checkpoint serves det (boxes), inst (masks) and panoptic (PQ).
# Trained by: .venv/bin/python scripts/train_task_model.py det   (see docs/task_models.md)
num_things, num_stuff = 4, 2
# the class names, in the model's label order: evaluation matches them to a dataset's categories by name
metainfo = dict(thing_classes=("disc", "square", "triangle", "figure"), stuff_classes=("wall", "ground"),
                classes=("disc", "square", "triangle", "figure", "wall", "ground"))
model = dict(
    type="PanopticFPN",
    data_preprocessor=dict(type="DetDataPreprocessor", mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375],
                           bgr_to_rgb=True, pad_size_divisor=32, pad_mask=True, mask_pad_value=0, pad_seg=True,
                           seg_pad_value=255),
    backbone=dict(type="ResNet", depth=18, base_channels=32, num_stages=4, out_indices=(0, 1, 2, 3),
                  frozen_stages=-1, norm_cfg=dict(type="BN", requires_grad=True), norm_eval=False, style="pytorch",
                  init_cfg=None),
    neck=dict(type="FPN", in_channels=[32, 64, 128, 256], out_channels=64, num_outs=5),
    rpn_head=dict(
        type="RPNHead", in_channels=64, feat_channels=64,
        anchor_generator=dict(type="AnchorGenerator", scales=[4], ratios=[0.5, 1.0, 2.0], strides=[4, 8, 16, 32, 64]),
        bbox_coder=dict(type="DeltaXYWHBBoxCoder", target_means=[0.0] * 4, target_stds=[1.0] * 4),
        loss_cls=dict(type="CrossEntropyLoss", use_sigmoid=True, loss_weight=1.0),
        loss_bbox=dict(type="L1Loss", loss_weight=1.0)),
    roi_head=dict(
        type="StandardRoIHead",
        bbox_roi_extractor=dict(type="SingleRoIExtractor", roi_layer=dict(type="RoIAlign", output_size=7, sampling_ratio=0),
                                out_channels=64, featmap_strides=[4, 8, 16, 32]),
        bbox_head=dict(type="Shared2FCBBoxHead", in_channels=64, fc_out_channels=256, roi_feat_size=7,
                       num_classes=num_things,
                       bbox_coder=dict(type="DeltaXYWHBBoxCoder", target_means=[0.0] * 4, target_stds=[0.1, 0.1, 0.2, 0.2]),
                       reg_class_agnostic=False,
                       loss_cls=dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=1.0),
                       loss_bbox=dict(type="L1Loss", loss_weight=1.0)),
        mask_roi_extractor=dict(type="SingleRoIExtractor", roi_layer=dict(type="RoIAlign", output_size=14, sampling_ratio=0),
                                out_channels=64, featmap_strides=[4, 8, 16, 32]),
        mask_head=dict(type="FCNMaskHead", num_convs=2, in_channels=64, conv_out_channels=64, num_classes=num_things,
                       loss_mask=dict(type="CrossEntropyLoss", use_mask=True, loss_weight=1.0))),
    semantic_head=dict(type="PanopticFPNHead", num_things_classes=num_things, num_stuff_classes=num_stuff,
                       in_channels=64, inner_channels=32, start_level=0, end_level=4,
                       norm_cfg=dict(type="GN", num_groups=8, requires_grad=True), conv_cfg=None,
                       loss_seg=dict(type="CrossEntropyLoss", ignore_index=255, loss_weight=0.5)),
    panoptic_fusion_head=dict(type="HeuristicFusionHead", num_things_classes=num_things, num_stuff_classes=num_stuff),
    train_cfg=dict(
        rpn=dict(assigner=dict(type="MaxIoUAssigner", pos_iou_thr=0.7, neg_iou_thr=0.3, min_pos_iou=0.3,
                               match_low_quality=True, ignore_iof_thr=-1),
                 sampler=dict(type="RandomSampler", num=128, pos_fraction=0.5, neg_pos_ub=-1, add_gt_as_proposals=False),
                 allowed_border=-1, pos_weight=-1, debug=False),
        rpn_proposal=dict(nms_pre=1000, max_per_img=300, nms=dict(type="nms", iou_threshold=0.7), min_bbox_size=0),
        rcnn=dict(assigner=dict(type="MaxIoUAssigner", pos_iou_thr=0.5, neg_iou_thr=0.5, min_pos_iou=0.5,
                                match_low_quality=True, ignore_iof_thr=-1),
                  sampler=dict(type="RandomSampler", num=128, pos_fraction=0.25, neg_pos_ub=-1, add_gt_as_proposals=True),
                  mask_size=28, pos_weight=-1, debug=False)),
    test_cfg=dict(
        rpn=dict(nms_pre=500, max_per_img=200, nms=dict(type="nms", iou_threshold=0.7), min_bbox_size=0),
        rcnn=dict(score_thr=0.05, nms=dict(type="nms", iou_threshold=0.5), max_per_img=50, mask_thr_binary=0.5),
        # HeuristicFusionHead: fuses every instance the R-CNN keeps (rcnn.score_thr), as mmdet does
        panoptic=dict(mask_overlap=0.5, stuff_area_limit=64)),
)
# The test pipeline icm and mmdet's own test loop run: the native size (Resize by 1 only records the
# scale factor that predict(rescale=True) reads; the data preprocessor pads to a multiple of 32).
test_pipeline = [
    dict(type="LoadImageFromFile"),
    dict(type="Resize", scale_factor=1.0, keep_ratio=True),
    dict(type="PackDetInputs", meta_keys=("img_id", "img_path", "ori_shape", "img_shape", "scale_factor")),
]
