"""Experiments: recipes that regenerate each paper's table, a resumable shardable sweep runner, and reports.

- :mod:`~fewbits.experiments.recipe`: ``load_recipe(path)`` reads a TOML recipe (pipeline + grid) into runs,
  each identified by the hash of its resolved configuration.
- :mod:`~fewbits.experiments.sweep`: ``sweep(recipe, out, shard=(i, n))`` runs each run once into a results
  folder (resumable after any kill; shared stage outputs computed once); ``plan`` says what is done.
- :mod:`~fewbits.experiments.report`: ``write_report(out)`` puts the results beside the papers' numbers and
  checks their claims (:mod:`~fewbits.experiments.claims`).
- :mod:`~fewbits.experiments.stages`: the stages recipes chain (``STAGES``); :mod:`~fewbits.experiments.base`
  defines what a stage is; :mod:`~fewbits.experiments.store` the results folder's layout and locks.

Nothing heavy is imported here: reading recipes and dry runs stay fast.
"""
