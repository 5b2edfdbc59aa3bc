# A small Semantic FPN for the 128x128 `shapes` benchmark: ResNetV1c-18 at quarter width (base 32),
# FPN with 64 channels, FPNHead predicting 6 classes (wall, ground, disc, square, triangle, figure)
# at stride 4. Serves the `seg` task (mIoU).
# Trained by: .venv/bin/python scripts/train_task_model.py seg   (see docs/task_models.md)
num_classes = 6
# the class names, in the model's label order: evaluation matches them to a dataset's classes by name
metainfo = dict(classes=("wall", "ground", "disc", "square", "triangle", "figure"))
norm_cfg = dict(type="BN", requires_grad=True)
model = dict(
    type="EncoderDecoder",
    data_preprocessor=dict(type="SegDataPreProcessor", mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375],
                           bgr_to_rgb=True, pad_val=0, seg_pad_val=255, size_divisor=32),
    pretrained=None,
    backbone=dict(type="ResNetV1c", depth=18, stem_channels=32, base_channels=32, num_stages=4,
                  out_indices=(0, 1, 2, 3), dilations=(1, 1, 1, 1), strides=(1, 2, 2, 2), norm_cfg=norm_cfg,
                  norm_eval=False, style="pytorch", contract_dilation=True, init_cfg=None),
    neck=dict(type="FPN", in_channels=[32, 64, 128, 256], out_channels=64, num_outs=4),
    decode_head=dict(type="FPNHead", in_channels=[64, 64, 64, 64], in_index=[0, 1, 2, 3],
                     feature_strides=[4, 8, 16, 32], channels=64, dropout_ratio=0.1, num_classes=num_classes,
                     norm_cfg=norm_cfg, align_corners=False, ignore_index=255,
                     loss_decode=dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=1.0,
                                      avg_non_ignore=True)),
    train_cfg=dict(),
    test_cfg=dict(mode="whole"),
)
# The test pipeline icm and mmseg's own test loop run: the image at its native size, the whole image
# at once (test_cfg mode "whole").
test_pipeline = [dict(type="LoadImageFromFile"), dict(type="LoadAnnotations"), dict(type="PackSegInputs")]
