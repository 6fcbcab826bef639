"""The ct-pipeline client gateway: a FastAPI app in front of the BentoML model server."""
