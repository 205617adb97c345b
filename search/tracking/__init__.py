"""A search's records in MLflow: one parent run per search, one child run per trial, confirmation
or ceiling.

- ``runs``: the names (tags, roles, filters) and the writes, each idempotent;
- ``logger``: the Tune callback that writes them as a search runs, best effort;
- ``reconcile``: what MLflow lacks of Tune's own records, sent afterwards;
- ``records``: reading a finished search back (confirmation, export).
"""
