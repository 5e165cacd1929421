"""Running the service: settings, wiring, the Celery app, the relay and the CLI."""
