"""`sonic estimate`: bytes read per decode step on any model and GPU count, and the speed they allow."""
