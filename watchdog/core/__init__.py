"""The pure core: the wire model, money, policies, decisions and budgets. No I/O,
no clock reads; imports nothing of ours outside core."""
