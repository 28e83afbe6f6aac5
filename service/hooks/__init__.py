"""Pipeline hooks: pre-hooks run in order before routing, post-hooks in reverse after the answer."""
