"""The feature-caching wing: teacher outputs computed once per image and written to a feature store.

pipeline (plan, create, cache shards, finalize), inputs (source image -> student view + teacher inputs),
calibration (fit the int8/PCA codecs before a store exists), repair (recompute exactly the damaged shards).
"""
