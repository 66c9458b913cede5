"""The sample application: three replicable models, their replicators, seed data and the demo."""
