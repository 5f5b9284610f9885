"""Fakes at true external boundaries only, each named as a fake (NVML: no GPU here)."""
