from icm import hookimpl


@hookimpl
def icm_register_tasks(register):
    from icm_mmpose.adapter import PoseAdapter

    register(PoseAdapter.name, PoseAdapter, metrics=list(PoseAdapter.metrics), primary=PoseAdapter.primary_metric,
             library="mmpose", description=PoseAdapter.description)
