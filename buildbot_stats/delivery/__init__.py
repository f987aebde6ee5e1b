"""Delivery: from the service's queue to a backend's write, through the spool.

``writer`` turns captured records into encoded points and spools them;
``spool`` keeps them on disk until written; ``queue`` writes each backend's
points in batches and retries, one queue per backend (a ``QueueSet``).
"""
