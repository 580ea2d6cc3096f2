"""Deployment files: prefect.yaml, the dataset specs and their sample sources (shipped as package
data, so the demo runs from a non-editable install too)."""
