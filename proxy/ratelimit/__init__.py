"""Rate limits and budgets, in memory for one replica or in Redis shared by all of them."""
