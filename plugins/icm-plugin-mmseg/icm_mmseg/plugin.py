from icm import hookimpl


@hookimpl
def icm_register_tasks(register):
    from icm_mmseg.adapter import SegAdapter

    register(SegAdapter.name, SegAdapter, metrics=list(SegAdapter.metrics), primary=SegAdapter.primary_metric,
             library="mmseg", description=SegAdapter.description)
