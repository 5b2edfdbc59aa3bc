"""icm task adapter for mmpose: pose (top-down keypoints on ground-truth boxes, COCO keypoint AP)."""
