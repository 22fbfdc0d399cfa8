"""One module per protocol: native REST, Open Inference Protocol (V2), health and metrics."""
