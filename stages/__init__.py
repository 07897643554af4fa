"""The pipeline's stages: each module runs as `python -m stages.<name>` from dvc.yaml."""
