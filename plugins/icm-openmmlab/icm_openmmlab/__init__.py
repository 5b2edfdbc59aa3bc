"""What the OpenMMLab task plugins share: the adapter base class, mmengine scopes, config and checkpoint
loading, the library's test pipeline on decoded pixels, its test loop, and feature reading.

A library, not a plugin: it registers nothing. The core (``icm``) never imports it; the plugins
icm-plugin-mmdet, -mmseg, -mmpose and -mmpretrain do.
"""

import os
import warnings

if not os.environ.get("ICM_DEBUG"):
    # OpenMMLab warns about its own deprecations on every import; users cannot act on those, so they
    # are hidden as icm's CLI hides torch's (ICM_DEBUG=1 shows them)
    for _module in ("mmdet", "mmseg", "mmpose", "mmpretrain", "mmengine", "mmcv"):
        for _category in (UserWarning, DeprecationWarning, FutureWarning):
            warnings.filterwarnings("ignore", category=_category, module=_module)

from icm_openmmlab.adapter import OpenMMLabAdapter, shared_forward  # noqa: E402
from icm_openmmlab.features import FEATURE_SPLITS, FeatureFedBackbone, reads_split
from icm_openmmlab.library_test import run_library_test, subset_positions
from icm_openmmlab.models import (build_model, check_fit, dataset_meta, freeze, load_config, normalise, quiet,
                                  read_state_dict, scope)
from icm_openmmlab.pipeline import TestPipeline, to_uint8

__all__ = ["FEATURE_SPLITS", "FeatureFedBackbone", "OpenMMLabAdapter", "TestPipeline", "build_model", "check_fit",
           "dataset_meta", "freeze", "load_config", "normalise", "quiet", "read_state_dict", "reads_split",
           "run_library_test", "scope", "shared_forward", "subset_positions", "to_uint8"]
