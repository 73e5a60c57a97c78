"""What tests at every level share: fakes, helpers and the types of the fixtures.

Fixtures stay in the `conftest.py` files; what they hand out, and the fakes a test
builds itself, live here so no test imports another folder's `conftest.py`.
"""
