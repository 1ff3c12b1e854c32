"""Frozen-backbone evaluation: kNN and linear probes on labelled shards; issue #5."""
