"""What people read: explain, replay, report, the status page, policy tests. Pure:
they render values the app reads for them."""
