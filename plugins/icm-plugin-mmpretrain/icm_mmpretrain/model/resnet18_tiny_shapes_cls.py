# A small ImageClassifier for the 128x128 `shapes` benchmark (4 classes: disc, square, triangle, figure;
# the label is the class of the largest visible thing): ResNet-18 at half width (stem and base 32
# channels; stages 32/64/128/256), global average pooling, one linear layer.
# Trained by: .venv/bin/python scripts/train_task_model.py cls   (see docs/task_models.md)
num_classes = 4
# the class names, in the model's label order: evaluation matches them to a dataset's classes by name
metainfo = dict(classes=("disc", "square", "triangle", "figure"))
model = dict(
    type="ImageClassifier",
    data_preprocessor=dict(type="ClsDataPreprocessor", num_classes=num_classes, mean=[123.675, 116.28, 103.53],
                           std=[58.395, 57.12, 57.375], to_rgb=True),
    # all four stages are returned: icm uses them as distillation features; the head reads the last one
    backbone=dict(type="ResNet", depth=18, stem_channels=32, base_channels=32, num_stages=4, out_indices=(0, 1, 2, 3),
                  style="pytorch", frozen_stages=-1, norm_cfg=dict(type="BN", requires_grad=True), norm_eval=False,
                  init_cfg=None),
    neck=dict(type="GlobalAveragePooling"),
    head=dict(type="LinearClsHead", num_classes=num_classes, in_channels=256,
              loss=dict(type="CrossEntropyLoss", loss_weight=1.0), topk=(1,), init_cfg=None),
)
# The test pipeline icm and mmpretrain's own test loop run: the image at its native size (the
# classifier pools globally).
test_pipeline = [dict(type="LoadImageFromFile"), dict(type="PackInputs")]
