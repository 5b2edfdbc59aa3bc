"""Hook specifications. Every hook is prefixed ``icm_``; most are ``register`` hooks.

Each ``register`` argument is a callable ``register(name, obj, **meta)``. Plugins, built-in ones included,
implement these with ``@icm.hookimpl``. docs/plugins/hooks.md documents every hook here (a test checks).
"""

import pluggy

hookspec = pluggy.HookspecMarker("icm")
hookimpl = pluggy.HookimplMarker("icm")


@hookspec
def icm_register_codecs(register):
    """Register codecs: ``register(name, factory, description=..., kind='anchor'|'learned')``.

    ``factory(**options)`` returns an :class:`icm.codecs.Codec`. Options come from the CLI
    (``--checkpoint``, ``--weights``, ``--device``) and are passed only when the codec accepts them.
    """


@hookspec
def icm_register_tasks(register):
    """Register task adapters: ``register(name, factory, description=..., metrics=[...], primary=...)``,
    the one declaration of the task's metrics (the adapter reads it: ``TaskAdapter.registration``).

    ``factory(config=None, checkpoint=None, device=None)`` returns an :class:`icm.tasks.TaskAdapter`.
    """


@hookspec
def icm_register_datasets(register):
    """Register datasets: ``register(name, factory, description=...)``."""


@hookspec
def icm_register_schedules(register):
    """Register loss-weight schedules for ``icm train``: ``register(name, factory, description=...)``.

    ``factory(terms, **options)`` returns an :class:`icm.training.schedules.Schedule`; ``terms`` are the
    run's loss-term names and ``options`` the keys of the config's ``[schedule]`` table besides ``name``.
    """


@hookspec
def icm_register_losses(register):
    """Register loss kinds for ``icm train``: ``register(kind, factory, description=..., task=...)``.

    ``factory(task, **options)`` returns an :class:`icm.training.losses.Loss`; ``task`` is the TASK of a
    ``KIND:TASK`` term (None for ``KIND`` alone) and ``options`` the keys of the term's table besides
    ``weight``. ``task="required"`` (the default), ``"optional"`` or ``"none"`` says whether a term
    must, may or must not name a task.
    """


@hookspec
def icm_register_commands(cli):
    """Add click commands or groups to the ``icm`` command line: ``cli.add_command(...)``."""
