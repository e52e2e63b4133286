"""The catalog: what exists, where, and which operations are under way (SQLAlchemy Core)."""
