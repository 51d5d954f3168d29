"""Stats: the dashboard snapshot built in the background (requirement S1), the live pool
and node views (S3, N8), the model hub's catalog (S2) and the dashboard page (S4)."""
