"""`sonic bench`: decode speed per request against the measured bandwidth ceiling."""
