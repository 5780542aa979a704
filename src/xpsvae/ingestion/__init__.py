"""Gaia DR3 XP archive files, any format, read into a store (``xpsvae ingest``).

From the bottom up: :mod:`.inflate` (text in chunks of lines), :mod:`.fastcsv`
(a chunk parsed at once), :mod:`.pool` (worker processes), :mod:`.records`
(one row), :mod:`.csvbatches` and :mod:`.formats` (a file in batches),
:mod:`.accounting` (rows, duplicates), :mod:`.writer` (the store's files),
:mod:`.gflux` (the G-band flux), :mod:`.readfile` (one file into shards),
:mod:`.jobs` (several files at once) and :mod:`.pipeline` (:func:`ingest`).
Imports :mod:`xpsvae.core`, :mod:`xpsvae.io` and :mod:`xpsvae.flux`; never PyTorch.
"""
