"""Models: teacher loading, student builders, and the architecture spec <-> module round trip."""
