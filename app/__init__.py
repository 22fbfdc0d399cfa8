"""nnserve: a FastAPI service that answers class probabilities from nnlib networks."""
