"""The running guard: the tick and its steps, the scheduler, the service, its
endpoints, metrics, notifications and housekeeping."""
