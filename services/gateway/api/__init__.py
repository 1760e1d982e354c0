"""The HTTP surface: routes (`app.py`), wire schemas, the HTTP rim (`http.py`: request ids, body limit, the one error mapper), the mounted FAQ admin API."""
