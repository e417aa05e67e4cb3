"""Full-catalog ranking with the table sharded, and the scores made of it."""
