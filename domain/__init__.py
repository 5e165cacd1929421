"""The billing core: no Falcon, no Celery, no environment."""
