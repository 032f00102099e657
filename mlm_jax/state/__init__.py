"""The state of a run: what it holds (:mod:`.train_state`), the optimizer that shapes it
(:mod:`.optim`), how it is saved (:mod:`.checkpoint`) and read back (:mod:`.restore`).

Below training in the layers: evaluation, export and inference read a run's state
without importing how it was trained.
"""
