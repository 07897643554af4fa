"""The pipeline's stages, exactly those of dvc.yaml: each runs as `python -m stages.<name>`, reads
its params, calls the library (mnist_cnn/) and writes its outputs."""
