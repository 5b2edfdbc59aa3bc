from icm import hookimpl


@hookimpl
def icm_register_tasks(register):
    from icm_mmdet.adapter import DetAdapter, InstAdapter, PanopticAdapter

    for cls in (DetAdapter, InstAdapter, PanopticAdapter):
        register(cls.name, cls, metrics=list(cls.metrics), primary=cls.primary_metric, library="mmdet",
                 description=cls.description)
