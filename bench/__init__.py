"""Benchmarks for fcmon: `python -m bench` (or `make bench`), not part of `make test`.

Every figure is measured in one run side by side with its reference, on
loopback against the bundled emulator running in its own process, and written
to bench/results/ (latest.json and latest.md).

Modules:
  procs      processes the bench starts (emulator, fcmon, blackbox_exporter, the
             raw reference client, the hanging server), /proc CPU and RSS, scrapes
  rawclient  the reference client: ssl + http.client, one fresh TLS connection per probe
  hangserver a TCP listener that accepts and never answers
  blackbox   prometheus-blackbox-exporter driven through /probe
  suites     the six goals of the issue
  report     results -> JSON + Markdown
"""
