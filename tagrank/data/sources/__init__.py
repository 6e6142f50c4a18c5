"""The converters of users' raw data into ranked-tag records: the source base, the raw-source base with its
bad-input policy, each format, tag normalising, downloads and the streaming JSON reader. What a run reads
(the data module, records, caches, images, features, samplers) stays in :mod:`tagrank.data`."""
