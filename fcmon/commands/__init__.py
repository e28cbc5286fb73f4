"""The one-shot commands: check, validate, demo. Import any layer below;
only demo (and the cli's `fcmon emulator`) may import the emulator."""
