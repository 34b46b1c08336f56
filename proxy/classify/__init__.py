"""Classification: what sensitive data a request carries, and at which level."""
