"""The module the ``icm`` entry point names. Keep it light: import the adapter inside the hook, so
``icm info`` and ``icm codecs`` never pay for it."""

from icm import hookimpl


@hookimpl
def icm_register_tasks(register):
    from icm_example.adapter import EdgeAdapter

    register(EdgeAdapter.name, EdgeAdapter, description=EdgeAdapter.description,
             metrics=list(EdgeAdapter.metrics), primary=EdgeAdapter.primary_metric)
