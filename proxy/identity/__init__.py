"""Identity: who is calling. OIDC access tokens from trusted issuers, and personal tokens."""
