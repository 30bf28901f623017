"""The compute engine: models, hooks, statistics, probe, DPO, interventions, evaluation."""
