"""The search service: Ray Tune trials of IIC configs, Optuna proposals, MLflow records.

Commands (each also a console script): ``run.py`` (iic-search), ``confirm.py`` (iic-confirm),
``export.py`` (iic-export), ``reconcile.py`` (iic-reconcile).

A search's stages, in order: ``plan`` (flags and preset, checked and stored for ``--resume``),
``tuning`` (TPE + ASHA, or PBT), ``confirmation`` (the best configs on fresh seeds), ``summary``;
``pipeline`` runs them, and ``best_configs`` exports a finished search. Beside them: ``preset``
(the preset file format), ``space`` (a preset as Optuna's and Tune's objects), ``driver`` (Ray,
storage and the trainable), ``tracking`` (MLflow), ``ranking``, ``challenger``, ``deadline``,
``ceiling``.
"""
