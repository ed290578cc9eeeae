"""Governance audit: lineage report (HTML + JSON), OpenLineage run events and row-level provenance, read from a
live Dagster instance and the code location's definitions (`nautilus audit ...`)."""
