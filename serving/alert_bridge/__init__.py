"""The alert bridge: Alertmanager webhooks (``ct_action="retrain"``) in, deduplicated retrain requests out."""
