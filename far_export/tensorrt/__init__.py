"""TensorRT: parser readiness of the graphs, engine building and its cache key, the `engines` command."""
