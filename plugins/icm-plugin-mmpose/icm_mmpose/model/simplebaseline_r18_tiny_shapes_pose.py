# A small top-down SimpleBaseline (Xiao et al. 2018) for the 5-keypoint `figure` of the 128x128 `shapes`
# benchmark: ResNet-18 at quarter width (stem and base 32 channels) on 64x64 crops of the ground-truth
# figure boxes (expanded 1.25x, made square), four deconvolutions up to 32x32 heatmaps (stride 2).
# Why 32x32 and not the usual stride 4 (16x16): keypoint OKS on these small figures (areas ~90-420 px)
# needs about 1 px accuracy; a 16x16 heatmap loses ~0.4 px on average through encode/decode alone
# (DARK refinement struggles near the crop border) and trained to a lower AP in the same time.
# The backbone returns all four stages (the head reads the last) so the icm adapter can hand them out
# as distillation features. Unbiased (DARK) encoding/decoding.
# Trained by: .venv/bin/python scripts/train_task_model.py pose --epochs 100   (icm-plugin-mmpose)
codec = dict(type="MSRAHeatmap", input_size=(64, 64), heatmap_size=(32, 32), sigma=2, unbiased=True,
             blur_kernel_size=11)
model = dict(
    type="TopdownPoseEstimator",
    data_preprocessor=dict(type="PoseDataPreprocessor", mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375],
                           bgr_to_rgb=True),
    backbone=dict(type="ResNet", depth=18, stem_channels=32, base_channels=32, num_stages=4, out_indices=(0, 1, 2, 3),
                  frozen_stages=-1, norm_cfg=dict(type="BN", requires_grad=True), norm_eval=False, style="pytorch",
                  init_cfg=None),
    head=dict(type="HeatmapHead", in_channels=256, out_channels=5, deconv_out_channels=(64, 64, 64, 32),
              deconv_kernel_sizes=(4, 4, 4, 4), loss=dict(type="KeypointMSELoss", use_target_weight=True), decoder=codec),
    # flip test as mmpose runs it: the mirrored crop's heatmaps are flipped back, shifted by one heatmap
    # pixel and averaged with the crop's own before one decode
    test_cfg=dict(flip_test=True, flip_mode="heatmap", shift_heatmap=True),
)
# The test pipeline icm and mmpose's own test loop run: each ground-truth box padded 1.25x about its
# centre and warped (cv2, affine) to the 64x64 model input.
test_pipeline = [
    dict(type="LoadImage"),
    dict(type="GetBBoxCenterScale", padding=1.25),
    dict(type="TopdownAffine", input_size=codec["input_size"]),
    dict(type="PackPoseInputs"),
]
# Used when the bound dataset's meta lacks them (the `shapes` values).
dataset_meta = dict(
    keypoint_names=["head", "left_hand", "right_hand", "left_foot", "right_foot"],
    flip_pairs=[[1, 2], [3, 4]],
    sigmas=[0.05, 0.07, 0.07, 0.08, 0.08],
)
