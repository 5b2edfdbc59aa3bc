from icm import hookimpl


@hookimpl
def icm_register_tasks(register):
    from icm_mmpretrain.adapter import ClsAdapter

    register(ClsAdapter.name, ClsAdapter, metrics=list(ClsAdapter.metrics), primary=ClsAdapter.primary_metric,
             library="mmpretrain", description=ClsAdapter.description)
