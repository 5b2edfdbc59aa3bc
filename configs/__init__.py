"""``icm.configs``: the core's shipped data (codec weights, experiment and training configs).

This folder is package data of the ``icm`` distribution (pyproject.toml maps it to ``icm.configs``),
so an installed wheel carries it; look files up with :func:`icm.paths.shipped`.
"""
