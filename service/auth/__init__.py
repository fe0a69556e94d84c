"""API keys: creation, storage (hashed), authentication and revocation."""
