"""Serving-side code. Nothing under services/ may import paddlenlp or other training packages."""
