"""One probe of one server: the mutual-TLS client, the probe run and its
deadlines, certificates, listener checks, per-server flights and the
results they produce. Imports only fcmon's core (config, runbook)."""
