"""Exact and semantic response cache: keys, FAISS index, learned verifier, SQLite persistence.

See docs/CACHE.md. The gateway side is `service/hooks/cache_hook.py`.
"""
from router.cache.cache import Hit, ResponseCache
from router.cache.keys import RequestKeys, request_keys
from router.cache.verifier import Verifier

__all__ = ["Hit", "RequestKeys", "ResponseCache", "Verifier", "request_keys"]
