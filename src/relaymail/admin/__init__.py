"""The admin listener: Prometheus metrics and the status page, read-only over HTTP.

Kept free of imports: the configuration reads admin.settings, and `sendmail` loads the
configuration without wanting an HTTP server.
"""
