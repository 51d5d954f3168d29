"""Stats: the live pool and node API (MISSION S3, N8); the background snapshot (S1) comes later."""
