"""The interactive inspect page: data encoding and HTML (page.py), its script and style (page.js, page.css)."""
