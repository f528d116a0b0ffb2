"""Helpers shared by more than one test folder (launcher, fixtures, builders). No tests live here.

A helper used by one folder only stays in that folder; one imported across folders moves here, so test
folders never import each other.
"""
