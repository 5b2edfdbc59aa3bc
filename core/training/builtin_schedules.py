"""Registers the built-in loss-weight schedules (``icm train``): fixed, le_phased, dwa, uncertainty.

Lazy factories: listing them (`icm plugins`) does not import torch."""

from icm import hookimpl
from icm.registry import Lazy


@hookimpl
def icm_register_schedules(register):
    schedules = "icm.training.schedules:"
    register("fixed", Lazy(schedules + "Fixed"), description="the configured weights, unchanged")
    register("le_phased", Lazy(schedules + "LePhased"), description="Le Eq. 4.1: MSE only, then task, then rate, in phases")
    register("dwa", Lazy(schedules + "DWA"), description="dynamic weight average (Le Eq. 2.6), temperature T")
    register("uncertainty", Lazy(schedules + "Uncertainty"), description="learned log-variance per term (Le Eq. 2.9/2.10)")
