"""Long jobs: work folders that resume, and one job split over a Ray cluster.

A job cuts its rows into units of ``chunk_rows`` consecutive rows of one input shard. A unit is the
piece of work that is scored in one engine call, saved when it is done (``workdir``) and handed to
one Ray actor (``ray_job``): because its rows and their batching never depend on what else is
running, a resumed or distributed run scores every unit exactly as an uninterrupted one does.

- ``units``      units, the per-unit scoring (through ``wsdm_serve.predict``) and the job's phases
- ``workdir``    the work folder: manifest, finished shards, elapsed time, refusal on mismatch
- ``identity``   what the manifest records: input hash, model identity, score-changing settings
- ``local``      the job in this process, on the engine ``predict`` would start
- ``sources``    Parquet shards from a file, folder, glob or pyarrow filesystem URI; their checks
- ``ray_job``    the job on Ray Data: prompting in CPU tasks, scoring in a pool of engine actors
- ``output``     a folder of Parquet shards ``id, winner, p_a, p_b``
- ``faults``     faults on purpose, for the tests that prove a job survives them
"""

DEFAULT_CHUNK_ROWS = 1024
"""Rows per unit: ~1.5M tokens on real rows, about a minute of one H200, so an interruption loses at
most that, while the per-call overhead (the engine's queue running empty once per unit) stays small."""
