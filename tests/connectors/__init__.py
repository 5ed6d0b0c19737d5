"""Tests of the reference connectors, one package each."""
