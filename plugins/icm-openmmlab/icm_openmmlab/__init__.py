"""What the OpenMMLab task plugins share: the adapter base class, mmengine scopes, config and checkpoint
loading, the library's test pipeline on decoded pixels, its test loop, and feature reading.

A library, not a plugin: it registers nothing. The core (``icm``) never imports it; the plugins
icm-plugin-mmdet, -mmseg, -mmpose and -mmpretrain do.
"""

from icm_openmmlab.adapter import OpenMMLabAdapter, shared_forward
from icm_openmmlab.features import FEATURE_SPLITS, FeatureFedBackbone, reads_split
from icm_openmmlab.library_test import run_library_test, subset_positions
from icm_openmmlab.models import (build_model, check_fit, dataset_meta, freeze, load_config, normalise, quiet,
                                  read_state_dict, scope)
from icm_openmmlab.pipeline import TestPipeline, to_uint8

__all__ = ["FEATURE_SPLITS", "FeatureFedBackbone", "OpenMMLabAdapter", "TestPipeline", "build_model", "check_fit",
           "dataset_meta", "freeze", "load_config", "normalise", "quiet", "read_state_dict", "reads_split",
           "run_library_test", "scope", "shared_forward", "subset_positions", "to_uint8"]
