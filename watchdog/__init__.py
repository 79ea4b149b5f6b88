"""batch-watchdog: guards LLM batch jobs on OpenAI-compatible Batch APIs."""
