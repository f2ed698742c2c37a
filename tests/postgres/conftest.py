"""The PostgreSQL fixtures (tests/store uses them too, through tests/conftest.py)."""
