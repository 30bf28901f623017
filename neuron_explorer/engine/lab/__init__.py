"""The prompt lab: one prompt through the base, DPO and patched base models, answered live by a model worker."""
