"""Offline data tools for POLAR: rollouts -> pairs, rankings -> triples, triples -> indexed dataset.

Run ``python -m data_tools --help``. The data contract they write lives in ``megatron_polar.data``.
"""
