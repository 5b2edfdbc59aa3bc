"""Registers the built-in loss-weight schedules (``icm train``): fixed, le_phased, dwa, uncertainty."""

from icm import hookimpl


@hookimpl
def icm_register_schedules(register):
    from icm.training.schedules import DWA, Fixed, LePhased, Uncertainty

    register("fixed", Fixed, description="the configured weights, unchanged")
    register("le_phased", LePhased, description="Le Eq. 4.1: MSE only, then task, then rate, in phases")
    register("dwa", DWA, description="dynamic weight average (Le Eq. 2.6), temperature T")
    register("uncertainty", Uncertainty, description="learned log-variance per term (Le Eq. 2.9/2.10)")
