"""icm task adapter for mmseg: seg (semantic segmentation, mIoU)."""
