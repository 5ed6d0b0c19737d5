"""Tests of the built-in sandbox connector and its loopback simulator."""
