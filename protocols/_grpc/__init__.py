"""Generated gRPC stubs for protocols/*.proto (regenerate with ``python -m protocols._grpc.generate``)."""
