"""icm task adapters for mmdet: det, inst and panoptic."""
