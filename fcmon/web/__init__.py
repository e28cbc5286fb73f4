"""The HTTP endpoint: the server (TLS, connection limits, lanes), the app
and its routes, basic auth, the status page. Imports core, probe, export."""
