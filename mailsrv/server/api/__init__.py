"""Management API dialects: Stalwart 0.15 REST (/api) and the 0.16 JMAP capability (jmap/management.py)."""
