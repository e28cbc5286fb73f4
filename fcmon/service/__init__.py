"""The daemon: scheduling, result handling and reuse, notifications to
systemd, logging, the instance id. Imports core, probe, export, web."""
