"""icm task adapter for mmpretrain image classifiers (task ``cls``)."""
