"""Frozen-backbone evaluation: kNN, linear and segmentation probes on labelled shards; issue #5.

``run.evaluate`` (CLI ``eoforge eval``) loads an exported backbone (``backbone``), prepares
inputs as the model was trained (``inputs``), extracts features (``features``), runs the
probes (``knn``, ``linear``, ``segmentation``) with ``metrics``, always beside a random-init
twin, and writes ``results.json`` + ``results.md`` (``report``). ``adapters`` turn EuroSAT-MS,
BigEarthNet and Sen1Floods11 into labelled datasets (CLI ``eoforge adapt``).
"""
