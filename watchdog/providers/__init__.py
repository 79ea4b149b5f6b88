"""The Batch APIs: HTTP with retries and breakers, the dialects, the client.
The only code that speaks HTTP to a provider."""
