"""Fixtures shared by the whole suite: real components, started once per session."""

from __future__ import annotations
