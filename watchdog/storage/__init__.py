"""The database: its schema, migrations and repositories. The only code that speaks SQL."""
