"""Acquisition: everything between a user's input and ``RUN/raw/``.

- :mod:`~curate.acquire.inputs`: URL lists (img2dataset's formats, any fsspec filesystem), their columns
  (:class:`~curate.acquire.inputs.InputConfig`) and :class:`~curate.acquire.inputs.InputError`;
- :mod:`~curate.acquire.staging`: the run's per-shard ``RUN/input/`` files and their fingerprint;
- :mod:`~curate.acquire.fetch`: the one hardened HTTP(S) GET; :mod:`~curate.acquire.download`: a shard's
  download into img2dataset's layout (:class:`~curate.acquire.download.AcquireConfig`);
- :mod:`~curate.acquire.existing`: already-downloaded input (img2dataset folders, WebDataset tars);
- :mod:`~curate.acquire.raw`: reading acquired shards back as Arrow tables.
"""
