"""Delivery, from the service to a backend's write: ``writer`` makes records encoded points and spools
them, ``spool`` keeps them on disk until written, ``queue`` writes each backend's batches and retries."""
