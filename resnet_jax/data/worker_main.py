"""The main module of DALI's spawned worker processes (record files read by byte range).

A spawned process imports its parent's main module first, as `__mp_main__`:
for `python -m resnet_jax.main` that is absl, ml_collections, the config and,
through the package, JAX, in every worker of every pipeline. While the
workers start, `dali._start` names this module as the main one
instead; it imports nothing, and a worker then loads only what unpickling
its source needs (resnet_jax.data.records: numpy) and DALI's worker code.
"""
